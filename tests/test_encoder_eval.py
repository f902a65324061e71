"""``simclr.evaluate_encoder``: any module, on a configured dataset or on tensors; uint8 is
converted and float must be in [0, 1] (nothing is misread); the protocol functions exported
from ``simclr`` are the ones ``simclr eval`` uses."""

import pytest
import torch
from torch import nn

import simclr
from simclr.config import build_config
from simclr.errors import SimCLRError
from simclr.evaluation import clustering, features, protocols
from simclr.evaluation import pipeline as encoder_eval


def quiet(*_):
    pass


def blob_images(n, seed):
    """Two classes of 1 x 8 x 8 uint8 images: dark or bright, with noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels.view(n, 1, 1, 1) == 1, 170.0, 70.0)
    noise = torch.randn(n, 1, 8, 8, generator=g) * 30
    return (base + noise).clamp(0, 255).to(torch.uint8), labels


def pooled():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


@pytest.fixture(scope="module")
def tensors():
    return {"train": blob_images(60, 0), "test": blob_images(20, 1)}


@pytest.fixture
def protocol_features(monkeypatch) -> list[dict]:
    """The features each ``evaluate_encoder`` call hands to the protocols, in call order."""
    seen = []
    real = encoder_eval.run_protocols
    monkeypatch.setattr(encoder_eval, "run_protocols",
                        lambda feats, *a, **k: seen.append(feats) or real(feats, *a, **k))
    return seen


def test_any_module_on_tensors_matches_the_protocol_functions(tensors, protocol_features):
    net = pooled()
    cfg = build_config(overrides={"eval.knn_k": 5, "eval.kmeans_init": 2,
                                  "train.precision": "fp32"})
    report = simclr.evaluate_encoder(net, tensors, ["linear", "knn", "kmeans"], cfg=cfg,
                                     log=quiet)
    assert report["feature_dim"] == 4 and report["dataset"] == "tensors"
    rows = {r["protocol"]: r for r in report["results"]}
    (xtr, ytr), (xte, yte) = tensors["train"], tensors["test"]
    ftr, fte = (simclr.extract_features(net, x) for x in (xtr, xte))
    (feats,) = protocol_features  # the module's own features of the images, nothing else
    assert torch.equal(feats["train"], ftr) and torch.equal(feats["test"], fte)
    assert rows["knn"]["top1"] == simclr.knn_accuracy(ftr, ytr, fte, yte, k=5)
    assert rows["linear"]["top1"] == simclr.linear_probe(ftr, ytr, fte, yte)["top1"]
    assert rows["kmeans"]["nmi"] == simclr.kmeans_scores(fte, yte, n_init=2)["nmi"]
    assert rows["linear"]["top1"] > 0.9  # the classes are separable by brightness


def test_uint8_is_converted_and_equals_float_in_unit_range(tensors, protocol_features):
    as_float = {k: (x.float() / 255, y) for k, (x, y) in tensors.items()}
    a = simclr.evaluate_encoder(pooled(), tensors, ["knn"], log=quiet)
    b = simclr.evaluate_encoder(pooled(), as_float, ["knn"], log=quiet)
    assert a["results"][0]["top1"] == b["results"][0]["top1"]
    for split in ("train", "test"):  # the same features: x / 255 from uint8, x from [0, 1]
        assert torch.equal(protocol_features[0][split], protocol_features[1][split])
    x = tensors["train"][0][:3]
    torch.testing.assert_close(simclr.extract_features(pooled(), x),
                               simclr.extract_features(pooled(), x.float() / 255))


@pytest.mark.parametrize("bad,match", [
    (lambda x: x.float(), r"float train images must be in \[0, 1\] but span"),  # 0-255 floats
    (lambda x: (x.float() / 255 - 0.5) / 0.2, r"not normalized images"),
    (lambda x: x.long(), r"torch.int64; pass uint8"),
    (lambda x: x.permute(0, 2, 3, 1).expand(-1, -1, -1, 3), r"channels-last"),
    (lambda x: x[:0], r"N > 0"),
])
def test_images_that_could_be_misread_are_refused(tensors, bad, match):
    data = {**tensors, "train": (bad(tensors["train"][0]), tensors["train"][1])}
    with pytest.raises(SimCLRError, match=match):
        simclr.evaluate_encoder(pooled(), data, ["knn"], log=quiet)


def test_bad_data_shapes_and_protocols(tensors):
    with pytest.raises(SimCLRError, match="must be a Config"):
        simclr.evaluate_encoder(pooled(), [tensors["train"]], log=quiet)
    short = {**tensors, "test": (tensors["test"][0], tensors["test"][1][:3])}
    with pytest.raises(SimCLRError, match="test labels must be 20 integers"):
        simclr.evaluate_encoder(pooled(), short, log=quiet)
    with pytest.raises(SimCLRError, match="unknown protocol 'linaer'"):
        simclr.evaluate_encoder(pooled(), tensors, ["linaer"], log=quiet)
    with pytest.raises(SimCLRError, match="cannot run on 1x8x8 images"):
        simclr.evaluate_encoder(nn.Conv2d(3, 2, 1), tensors, log=quiet)


def test_a_run_encoder_on_its_data_config_equals_simclr_eval(run_copy):
    run_dir = run_copy
    cfg = build_config(base=__import__("yaml").safe_load((run_dir / "config.yaml").read_text()))
    cfg.eval.kmeans_init = 2
    got = simclr.evaluate_encoder(simclr.load_encoder(run_dir), cfg, ["knn", "linear"],
                                  log=quiet)
    want = simclr.evaluate(run_dir, ["knn", "linear"], ["eval.baselines=false"], write=False,
                           log=quiet)
    assert got["dataset"] == "mnist" and got["feature_dim"] == want["feature_dim"] == 32
    for a, b in zip(got["results"], want["results"], strict=True):
        assert a["protocol"] == b["protocol"] and a["n_test"] == b["n_test"] == 48
        assert a["top1"] == b["top1"]  # the same features, the same protocol


def test_finetune_runs_on_any_module(tensors):
    cfg = build_config(overrides={"finetune.epochs": 1, "finetune.batch_size": 16,
                                  "finetune.labels": 0.5})
    net = pooled()
    before = net[0].weight.detach().clone()
    report = simclr.evaluate_encoder(net, tensors, ["finetune"], cfg=cfg, log=quiet)
    row = report["results"][0]
    assert row["protocol"] == "finetune" and row["feature_dim"] == 4 and row["n_train"] == 30
    assert torch.equal(net[0].weight, before)  # a copy was trained, not the module
    # long enough to learn the brightness classes from all labels: every test image right,
    # where the untrained head is at chance (0.5)
    cfg = build_config(overrides={"finetune.epochs": 10, "finetune.batch_size": 16,
                                  "finetune.labels": 1.0, "finetune.lr": 1.0})
    row = simclr.evaluate_encoder(net, tensors, ["finetune"], cfg=cfg, log=quiet)["results"][0]
    assert row["n_train"] == 60 and row["top1"] == 1.0


def test_protocol_functions_are_exported():
    assert simclr.extract_features is features.extract_features
    assert simclr.linear_probe is protocols.linear_probe
    assert simclr.knn_accuracy is protocols.knn_accuracy
    assert simclr.kmeans_scores is clustering.clustering_metrics
