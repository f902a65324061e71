"""`simclr eval` and the Python API around it: eval.json, baselines, load_encoder, the feature
cache, the online monitor, the 80/20 protocol and fine-tuning."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import simclr
import simclr.evaluation.cache as feature_cache
import simclr.evaluation.finetune as finetune_module
from simclr.config import build_config
from simclr.data.datasets import load_split
from simclr.errors import SimCLRError
from simclr.evaluation.features import pixel_features
from simclr.evaluation.results import format_table, merge_results, result_inputs, result_key
from simclr.evaluation.splits import eval_data
from simclr.tools.report import write_report
from simclr.train.pretrain import pretrain
from tests.formats import write_image_folder
from tests.helpers import cli

REPO = Path(__file__).parent.parent


def test_cli_eval_writes_schema_with_baselines(run_copy):
    run_dir = run_copy
    proc = cli("eval", run_dir, "--eval.kmeans_init=2", "--train.precision=fp32")
    assert proc.returncode == 0, proc.stderr
    assert "linear top1" in proc.stdout and "raw_pixels" in proc.stdout
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["dataset"] == "mnist" and report["epoch"] == 2 and report["feature_dim"] == 32
    got = {(r["model"], r["protocol"]) for r in report["results"]}
    assert got == {(m, p) for m in ("simclr", "random_init", "raw_pixels")
                   for p in ("linear", "knn", "kmeans")}
    for r in report["results"]:
        assert r["split"] == "test" and r["n_train"] == 128 and r["n_test"] == 48
        assert "settings" in r and "epoch" in r
        keys = {"linear": ("top1", "top5"), "knn": ("top1",),
                "kmeans": ("nmi", "accuracy")}[r["protocol"]]
        for key in keys:
            assert 0.0 <= r[key] <= 1.0
        if r["protocol"] == "kmeans":
            assert -1.0 <= r["ari"] <= 1.0
    linear = next(r for r in report["results"] if r["protocol"] == "linear")
    assert linear["settings"]["chosen_on"].endswith("of train")
    assert linear["n_val"] > 0
    pixels = next(r for r in report["results"] if r["model"] == "raw_pixels")
    assert pixels["feature_dim"] == 28 * 28
    # the numbers, computed here from the data files with the public protocol functions
    rows = {(r["model"], r["protocol"]): r for r in report["results"]}
    root = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"]
    (x, y), (xt, yt) = (load_split("mnist", s, root, download=False) for s in ("train", "test"))
    enc = simclr.load_encoder(run_dir)
    f, ft = (simclr.extract_features(enc.encoder, images, enc.meta["mean"], enc.meta["std"])
             for images in (x, xt))
    assert rows["simclr", "knn"]["top1"] == simclr.knn_accuracy(f, y, ft, yt, k=20)
    assert rows["simclr", "linear"]["top1"] == simclr.linear_probe(f, y, ft, yt)["top1"]
    assert rows["simclr", "kmeans"]["nmi"] == simclr.kmeans_scores(ft, yt, n_init=2)["nmi"]
    p, pt = pixel_features(x), pixel_features(xt)
    assert rows["raw_pixels", "knn"]["top1"] == simclr.knn_accuracy(p, y, pt, yt, k=20)
    assert 0.3 < rows["simclr", "linear"]["top1"] < 1.0  # a learnable task, not saturated


def test_online_monitor_equals_offline_knn(run_copy):
    run_dir = run_copy
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    online = [x for x in lines if x["kind"] == "knn"]
    assert [x["epoch"] for x in online] == [1, 2]
    report = simclr.evaluate(run_dir, ["knn"], ["eval.baselines=false"], write=False,
                             log=lambda *_: None)
    assert report["results"][0]["top1"] == online[-1]["knn_top1"]


def test_load_encoder_applies_normalization(run_dir):
    enc = simclr.load_encoder(run_dir)
    assert not enc.training and enc.feature_dim == 32
    x = torch.rand(5, 1, 28, 28)
    mean, std = enc.meta["mean"][0], enc.meta["std"][0]
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.encoder((x - mean) / std))
    assert simclr.load_encoder(run_dir / "encoder.safetensors").meta == enc.meta


def test_features_are_cached_per_encoder(run_copy, monkeypatch):
    run_dir = run_copy
    simclr.evaluate(run_dir, ["knn"], ["eval.baselines=false"], write=False, log=lambda *_: None)
    calls = []
    real = feature_cache.extract_features
    monkeypatch.setattr(feature_cache, "extract_features",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    simclr.evaluate(run_dir, ["knn", "kmeans"], ["eval.baselines=false"], write=False,
                    log=lambda *_: None)
    assert calls == []


def test_finetune_is_named_finetune_and_scores_the_trained_classifier_on_test(run_copy):
    settings = ["eval.baselines=false", "finetune.epochs=2", "finetune.labels=0.5",
                "train.precision=fp32"]
    report = quiet_eval(run_copy, ["finetune"], settings, write=False)
    (row,) = report["results"]
    assert row["protocol"] == "finetune" and row["settings"]["trains_encoder"] is True
    # independently: the data as read from its files, half of each class (rounded), the
    # classifier trained with the same settings, scored by hand on the test split
    cfg = build_config(overrides=settings, base=yaml.safe_load((run_copy / "config.yaml")
                                                               .read_text()))
    (x, y), (xt, yt) = (load_split("mnist", s, cfg.data.root, download=False)
                        for s in ("train", "test"))
    assert row["n_train"] == sum(round(0.5 * int(n)) for n in torch.bincount(y))
    assert row["n_test"] == len(yt)
    enc = simclr.load_encoder(run_copy)
    idx = finetune_module.label_subset(y, 0.5, cfg.train.seed)
    model = finetune_module.train_classifier(enc, x[idx], y[idx], 10, cfg, torch.device("cpu"),
                                             "fp32").eval()
    mean, std = enc.meta["mean"][0], enc.meta["std"][0]
    with torch.no_grad():
        pred = model((xt.float() / 255 - mean) / std).argmax(1)
    assert row["top1"] == pytest.approx((pred == yt).double().mean().item(), abs=1e-6)
    trained, start = model[0].state_dict(), enc.encoder.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the encoder learned


def test_eighty_twenty_protocol_on_a_folder_without_test_split(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=2, n_per_class=20, size=16)
    cfg = build_config(overrides={
        "data.name": "folder", "data.root": str(tmp_path / "imgs"), "data.image_size": 16,
        "model.width": 0.0625, "model.proj_dim": 8, "train.batch_size": 8, "train.epochs": 1,
        "train.progress": False, "eval.every": 0})
    run_dir = pretrain(cfg, tmp_path / "run", log=lambda *_: None)
    with pytest.raises(SimCLRError, match="--probe.split=0.8"):
        simclr.evaluate(run_dir, ["knn"], ["eval.baselines=false"], log=lambda *_: None)
    report = simclr.evaluate(run_dir, ["linear", "knn"], ["probe.split=0.8", "eval.knn_k=5"],
                             log=lambda *_: None)
    assert {r["n_train"] for r in report["results"]} == {32}
    assert {r["n_test"] for r in report["results"]} == {8}
    data = eval_data(build_config(overrides=["probe.split=0.8"], base=yaml.safe_load(
        (run_dir / "config.yaml").read_text())))
    (xtr, _), (xte, yte) = data["train"], data["test"]
    assert torch.bincount(yte).tolist() == [4, 4]  # a fifth of each class held out
    whole = {bytes(img.numpy()) for img in load_split("folder", "train", tmp_path / "imgs",
                                                      image_size=16)[0]}
    train, test = ({bytes(img.numpy()) for img in images} for images in (xtr, xte))
    assert not train & test and train | test == whole and len(whole) == 40  # a partition


def test_unknown_protocol_and_missing_run(tmp_path, run_dir):
    with pytest.raises(SimCLRError, match="unknown protocol 'linaer'"):
        simclr.evaluate(run_dir, ["linaer"])
    with pytest.raises(SimCLRError, match="not a simclr run dir|config.yaml not found"):
        simclr.evaluate(tmp_path, ["knn"])


def quiet_eval(*args, **kwargs):
    return simclr.evaluate(*args, log=lambda *_: None, **kwargs)


@pytest.fixture
def fresh_run(run_dir, tmp_path):
    """A copy of the module's run without its eval.json or feature cache."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval.json", "features"))
    return copy


def test_eval_json_accumulates_and_a_repeat_replaces_only_its_own_entry(fresh_run):
    """Issue 16's reproduction: eval, then eval --protocol finetune, then report."""
    quiet_eval(fresh_run, ["linear", "knn", "kmeans"], ["eval.kmeans_init=2"])
    first = json.loads((fresh_run / "eval.json").read_text())
    returned = quiet_eval(fresh_run, ["finetune"], ["finetune.epochs=1", "finetune.labels=0.5"])
    assert {r["protocol"] for r in returned["results"]} == {"finetune"}  # this call's
    both = json.loads((fresh_run / "eval.json").read_text())
    models = ("simclr", "random_init", "raw_pixels")
    assert [(r["model"], r["protocol"]) for r in both["results"]] == [
        (m, p) for m in models for p in ("linear", "knn", "kmeans")] + [
        ("simclr", "finetune"), ("random_init", "finetune")]
    assert both["results"][:9] == first["results"]  # the earlier results, untouched
    assert both["protocols"] == ["linear", "knn", "kmeans", "finetune"]
    table = format_table(both)
    assert table.splitlines()[1].split() == ["model", "linear", "top1", "linear", "top5",
                                             "kNN", "top1", "k-means", "NMI", "ARI", "cluster",
                                             "acc", "finetune", "top1"]
    assert table.splitlines()[2].split()[0] == "simclr" and "-" not in \
        table.splitlines()[2].split()[1:]  # every protocol's number on the simclr row
    assert "finetune top1" in write_report(fresh_run, log=lambda *_: None).read_text()

    # the same settings again: only the kNN entries are replaced (and move to the end)
    again = quiet_eval(fresh_run, ["knn"], ["eval.kmeans_init=2"])
    now = json.loads((fresh_run / "eval.json").read_text())["results"]
    assert len(now) == 11 and now[-3:] == again["results"]
    assert [r for r in now[:-3]] == [r for r in both["results"] if r["protocol"] != "knn"]
    # other settings are another entry; the table shows the newest of each cell
    k5 = quiet_eval(fresh_run, ["knn"], ["eval.knn_k=5", "eval.baselines=false"])
    now = json.loads((fresh_run / "eval.json").read_text())
    knn = [r for r in now["results"] if r["model"] == "simclr" and r["protocol"] == "knn"]
    assert [r["inputs"]["eval.knn_k"] for r in knn] == [20, 5]
    assert knn[-1] == k5["results"][0]
    simclr_row = format_table(now).splitlines()[2].split()
    assert simclr_row[3] == f"{100 * knn[-1]['top1']:.2f}"


def test_results_of_other_split_sizes_get_rows_of_their_own(fresh_run):
    quiet_eval(fresh_run, ["knn"], ["eval.baselines=false"])
    quiet_eval(fresh_run, ["knn"], ["eval.baselines=false", "eval.subset=64",
                                    "eval.test_subset=40"])
    lines = format_table(json.loads((fresh_run / "eval.json").read_text())).splitlines()
    assert lines[0] == "mnist epoch 2, percent on the test split:"
    assert [x.split("  ")[0].strip() for x in lines[2:]] == [
        "simclr (train 128, test 48)", "simclr (train 64, test 40)"]


def test_result_keys():
    cfg = build_config(overrides={"data.name": "mnist"})
    inputs = result_inputs(cfg, "knn", "fp32", "cpu")
    assert inputs == {"data.name": "mnist", "data.image_size": 0, "eval.subset": 0,
                      "eval.test_subset": 0, "probe.split": 0.0, "train.seed": 0,
                      "eval.knn_k": 200, "eval.knn_temperature": 0.1, "precision": "fp32",
                      "device": "cpu"}
    row = {"model": "simclr", "model_sha256": "ab", "protocol": "knn", "inputs": inputs}
    other = {**row, "inputs": {**inputs, "precision": "bf16"}}
    assert result_key(row) != result_key(other)
    assert merge_results([row, other], [dict(row, top1=0.5)]) == [other, dict(row, top1=0.5)]


def test_encoder_file_alone_is_evaluated_on_the_dataset_it_records(run_dir, tmp_path):
    shutil.copy(run_dir / "encoder.safetensors", tmp_path / "enc.safetensors")
    root = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"]
    data = [f"data.root={root}", "data.download=false", "eval.baselines=false"]
    report = quiet_eval(None, ["knn"], data + ["eval.knn_k=20"],
                        encoder_file=tmp_path / "enc.safetensors")
    assert report["dataset"] == "mnist" and report["results"][0]["n_train"] == 128
    assert json.loads((tmp_path / "eval.json").read_text())["dataset"] == "mnist"
    with pytest.raises(SimCLRError, match="cifar10 files not found"):  # an override wins
        quiet_eval(None, ["knn"], data + ["data.name=cifar10"],
                   encoder_file=tmp_path / "enc.safetensors")


def test_baseline_features_are_cached_by_everything_that_changes_them(fresh_run, monkeypatch,
                                                                       cpu_kind):
    calls = []
    real = feature_cache.extract_features
    monkeypatch.setattr(feature_cache, "extract_features",
                        lambda *a, **k: calls.append(k.get("precision", a[-1])) or real(*a, **k))
    quiet_eval(fresh_run, ["knn"])  # precision auto: cpu_kind's
    assert calls == [cpu_kind] * 4  # simclr and random_init, train and test
    assert len(list((fresh_run / "features").iterdir())) == 4
    calls.clear()
    quiet_eval(fresh_run, ["knn", "kmeans"], ["eval.kmeans_init=2"])
    assert calls == []  # both encoders' features come from the cache
    quiet_eval(fresh_run, ["knn"], [f"train.precision={cpu_kind}"])
    assert calls == []  # auto is this precision: the same features
    other = "fp32" if cpu_kind == "bf16" else "bf16"
    quiet_eval(fresh_run, ["knn"], [f"train.precision={other}"])
    assert calls == [other] * 4  # another precision: extracted again, cached apart
    assert len(list((fresh_run / "features").iterdir())) == 8
    calls.clear()
    quiet_eval(fresh_run, ["knn"], ["train.seed=1"])  # another random init; same simclr
    assert len(calls) == 2


def test_load_encoder_takes_uint8_images_as_pixels(run_dir):
    enc = simclr.load_encoder(run_dir)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc(x.float() / 255))
        with pytest.raises(SimCLRError, match=r"float images in \[0, 1\] or uint8"):
            enc(x.long())
