"""Evaluation protocols: kNN vs a per-sample loop, linear probe honesty (no test leak),
feature extraction vs a direct forward (clustering: test_clustering.py)."""

import importlib
import math

import pytest
import torch

from simclr.errors import SimCLRError
from simclr.models.resnet import ResNet
from tests.helpers import blobs

# the modules are imported by path to be explicit: protocols, features, splits
E = importlib.import_module("simclr.evaluation.protocols")
F_ = importlib.import_module("simclr.evaluation.features")
S_ = importlib.import_module("simclr.evaluation.splits")


# ----------------------------------------------------------------------------- kNN


def knn_reference(train, train_labels, test, k, t, num_classes):
    """Per test row: cosine similarity to every train row, top k, vote exp(sim / t) per class."""
    preds = []
    for q in test.double():
        sims = [(float(q @ r) / (float(q.norm()) * float(r.norm())), int(lab))
                for r, lab in zip(train.double(), train_labels, strict=True)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, lab in sims[:k]:
            votes[lab] += math.exp(sim / t)
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return torch.tensor(preds)


@pytest.mark.parametrize("k,t,chunk", [(7, 0.5, 4), (1, 0.1, 1024), (200, 0.1, 3), (15, 0.05, 8)])
def test_knn_matches_per_sample_reference(k, t, chunk):
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(60, 8, generator=g), torch.randn(17, 8, generator=g)
    train_labels = torch.randint(0, 4, (60,), generator=g)
    got = E.knn_predict(train, train_labels, test, k=k, temperature=t, chunk=chunk)
    want = knn_reference(train, train_labels, test, min(k, 60), t, 4)
    assert torch.equal(got, want)


def test_knn_scale_invariant_and_small_temperature_is_finite():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 6, generator=g), torch.randn(20, 6, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    base = E.knn_predict(train, labels, test, k=10)
    assert torch.equal(E.knn_predict(train * 7, labels, test * 0.01, k=10), base)
    # exp(1 / 0.005) overflows float32; votes are shifted by the top similarity first
    cold = E.knn_predict(train, labels, test, k=10, temperature=0.005)
    assert torch.equal(cold, E.knn_predict(train, labels, test, k=1))


# ----------------------------------------------------------------------------- accuracy


def test_knn_and_probe_separate_well_separated_classes():
    x, y = blobs(750, 5, 32, spread=4.0, seed=1)
    train, train_y, test, test_y = x[:500], y[:500], x[500:], y[500:]
    assert E.knn_accuracy(train, train_y, test, test_y) >= 0.99
    r = E.linear_probe(train, train_y, test, test_y)
    assert r["top1"] >= 0.99 and r["top5"] == 1.0 and r["val_top1"] >= 0.99
    assert (r["n_train"], r["n_val"], r["n_test"], r["feature_dim"]) == (500, 50, 250, 32)
    assert set(r["grid"]) == set(E.WEIGHT_DECAYS) and r["grid"][r["weight_decay"]] == r["val_top1"]


def test_random_labels_stay_near_chance():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 16, generator=g)
    y = torch.randint(0, 5, (4000,), generator=g)
    train, train_y, test, test_y = x[:2000], y[:2000], x[2000:], y[2000:]
    sigma = math.sqrt(0.2 * 0.8 / 2000)
    assert abs(E.knn_accuracy(train, train_y, test, test_y) - 0.2) < 4 * sigma
    r = E.linear_probe(train, train_y, test, test_y)
    assert abs(r["top1"] - 0.2) < 4 * sigma
    assert abs(r["top5"] - 1.0) < 1e-9  # 5 classes: the top 5 always contain the label


def test_probe_under_five_classes_has_no_top5():
    x, y = blobs(300, 3, 8, spread=4.0, seed=2)
    r = E.linear_probe(x[:200], y[:200], x[200:], y[200:], weight_decays=(1e-4,))
    assert r["top5"] is None and r["top1"] >= 0.99 and r["weight_decay"] == 1e-4


def test_fit_probe_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(400, 4, 10, spread=1.0, seed=5)
    wd = 1e-2
    probe = E.fit_probe(x, y, wd, max_iter=500)
    xs = ((x - probe["mean"]) / probe["std"]).double()
    # sklearn minimizes 0.5 ||W||^2 + C * sum CE; ours mean CE + wd / 2 ||W||^2 -> C = 1/(wd n)
    ref = LogisticRegression(C=1 / (wd * len(x)), tol=1e-12, max_iter=10000)
    ref.fit(xs.numpy(), y.numpy())

    def objective(w, b):
        logits = xs @ w.T + b
        ce = logits.logsumexp(1) - logits[torch.arange(len(y)), y]
        return (ce.mean() + 0.5 * wd * (w * w).sum()).item()

    ours = objective(probe["weight"].double(), probe["bias"].double())
    best = objective(torch.from_numpy(ref.coef_), torch.from_numpy(ref.intercept_))
    assert ours == pytest.approx(best, rel=1e-6)  # float32 L-BFGS reaches the optimum
    probs = E.probe_logits(probe, x).double().softmax(1)
    assert torch.allclose(probs, torch.from_numpy(ref.predict_proba(xs.numpy())), atol=1e-3)


# ----------------------------------------------------------------------------- honesty


def test_stratified_split_is_a_seeded_per_class_partition():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([100, 37, 9, 1, 250])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    rest, held = S_.stratified_split(labels, 0.1, seed=4)
    assert torch.equal(torch.sort(torch.cat([rest, held])).values, torch.arange(len(labels)))
    counts = torch.bincount(labels[held], minlength=5).tolist()
    assert counts == [10, 4, 1, 0, 25]  # round(0.1 n_c); the single-row class stays in rest
    again = S_.stratified_split(labels, 0.1, seed=4)
    assert torch.equal(again[1], held)
    assert not torch.equal(S_.stratified_split(labels, 0.1, seed=5)[1], held)

    feats = labels[:, None].float().repeat(1, 3)
    tr, tr_y, te, te_y = E.split_train_test(feats, labels, train_fraction=0.8, seed=1)
    assert len(tr) + len(te) == len(labels)
    assert torch.bincount(te_y, minlength=5).tolist() == [20, 7, 2, 0, 50]
    assert torch.equal(tr[:, 0].long(), tr_y) and torch.equal(te[:, 0].long(), te_y)


def leak_setup():
    """Small overlapping classes so that different weight decays predict differently."""
    x, y = blobs(500, 4, 40, spread=0.35, seed=11)
    return x[:300], y[:300], x[300:], y[300:]


GRID = (0.0, 1e-2, 1.0)


def test_test_labels_that_would_flip_the_choice_do_not_change_it():
    train, train_y, test, _ = leak_setup()
    honest = E.select_weight_decay(train, train_y, weight_decays=GRID)["weight_decay"]
    other = next(wd for wd in GRID if wd != honest)
    # test labels = what the `other` setting predicts: selecting on them would pick `other`
    fake_y = E.probe_logits(E.fit_probe(train, train_y, other), test).argmax(1)
    test_acc = {wd: (E.probe_logits(E.fit_probe(train, train_y, wd), test).argmax(1)
                     == fake_y).float().mean().item() for wd in GRID}
    assert max(test_acc, key=test_acc.get) == other and test_acc[honest] < 1.0
    results = [E.linear_probe(train, train_y, test, labels, weight_decays=GRID)
               for labels in (fake_y, (fake_y + 1) % 4)]
    for r in results:
        assert r["weight_decay"] == honest
    assert results[0]["grid"] == results[1]["grid"]
    assert results[0]["val_top1"] == results[1]["val_top1"]


def test_selection_sees_only_train_rows_and_refit_sees_all_of_them(monkeypatch):
    train, train_y, test, test_y = leak_setup()
    test = test[:150]
    test_y = test_y[:150]
    calls = []
    real_select, real_fit, real_softmax, real_logits = (
        E.select_weight_decay, E.fit_probe, E._fit_softmax, E.probe_logits)

    def select(*args, **kwargs):
        calls.append(("select", args[0], args[1]))
        assert all(not isinstance(a, torch.Tensor) for a in list(args[2:]) + list(kwargs.values()))
        return real_select(*args, **kwargs)

    def fit(feats, labels, *args, **kwargs):
        calls.append(("refit", feats, labels))
        return real_fit(feats, labels, *args, **kwargs)

    def softmax(x, y, *args):
        calls.append(("fit", x.shape[0]))
        return real_softmax(x, y, *args)

    def logits(probe, feats):
        calls.append(("predict", feats.shape[0]))
        return real_logits(probe, feats)

    for name, fn in [("select_weight_decay", select), ("fit_probe", fit),
                     ("_fit_softmax", softmax), ("probe_logits", logits)]:
        monkeypatch.setattr(E, name, fn)
    r = E.linear_probe(train, train_y, test, test_y, weight_decays=GRID, val_fraction=0.2)
    n_val = 60  # 20% of each class of 300 rows
    assert r["n_val"] == n_val
    kinds = [c[0] for c in calls]
    assert kinds == ["select"] + ["fit", "predict"] * 3 + ["refit", "fit", "predict"]
    assert torch.equal(calls[0][1], train) and torch.equal(calls[0][2], train_y)
    assert all(c[1] == 300 - n_val for c in calls[1:7:2])  # selection fits: train minus val
    assert all(c[1] == n_val for c in calls[2:7:2])  # selection scores: the val rows
    assert torch.equal(calls[7][1], train) and torch.equal(calls[7][2], train_y)  # refit: all
    assert calls[8][1] == 300 and calls[9] == ("predict", 150)  # test used once, at the end


# ----------------------------------------------------------------------------- features


def tiny_encoder():
    torch.manual_seed(0)
    return ResNet("resnet18", width=0.125, stem="cifar", in_channels=3)


def test_extract_features_is_eval_mode_forward_on_normalized_input():
    enc = tiny_encoder().train()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    feats = F_.extract_features(enc, images, mean, std, batch_size=4)
    assert enc.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # BN untouched
    enc.eval()
    with torch.no_grad():
        x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
            / torch.tensor(std).view(1, 3, 1, 1)
        want = enc(x)
    assert feats.dtype == torch.float32 and feats.shape == (10, enc.feature_dim)
    assert torch.allclose(feats, want, atol=1e-5, rtol=1e-4)
    assert torch.equal(feats, F_.extract_features(enc, images, mean, std, batch_size=4))
    assert not enc.training  # an eval-mode encoder stays in eval mode
    bf16 = F_.extract_features(enc, images, mean, std, precision="bf16")
    assert bf16.dtype == torch.float32 and torch.allclose(bf16, want, atol=0.1, rtol=0.1)
    # bf16 is the same forward under CPU autocast on the channels_last normalized batch, not
    # the fp32 forward (which a precision that is ignored would give)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want_bf16 = enc(x.contiguous(memory_format=torch.channels_last))
    assert want_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16, want_bf16.float(), rtol=0, atol=0)
    assert not torch.equal(bf16, feats)
    assert (bf16 - feats).abs().max() > 1e-3  # bf16 has ~3 significant digits


def test_extract_features_rejects_bad_input():
    enc = tiny_encoder()
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(SimCLRError, match="per channel"):
        F_.extract_features(enc, images, [0.5], [0.5])
    with pytest.raises(SimCLRError, match="uint8"):
        F_.extract_features(enc, images.float(), [0.5] * 3, [0.5] * 3)
    with pytest.raises(SimCLRError, match="precision"):
        F_.extract_features(enc, images, [0.5] * 3, [0.5] * 3, precision="int8")


def test_pixel_features_flatten_to_unit_range():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    f = F_.pixel_features(images)
    assert f.shape == (5, 48) and f.dtype == torch.float32
    assert torch.equal(f * 255, images.reshape(5, -1).float())


def test_bad_labels_and_settings_raise_clear_errors():
    x = torch.randn(20, 4)
    y = torch.arange(20) % 2
    with pytest.raises(SimCLRError, match="labels must be"):
        E.knn_predict(x, y[:10], x)
    with pytest.raises(SimCLRError, match="negative"):
        E.linear_probe(x, y - 1, x, y)
    with pytest.raises(SimCLRError, match="never shows"):
        E.linear_probe(x, y, x, y + 1)
    with pytest.raises(SimCLRError, match="weight_decays is empty"):
        E.select_weight_decay(x, y, weight_decays=())
    with pytest.raises(SimCLRError, match="-D"):
        E.linear_probe(x, y, x[:, :3], y)
    with pytest.raises(SimCLRError, match="dimension"):
        E.knn_predict(x, y, x[:, :3])
    with pytest.raises(SimCLRError, match="NaN"):
        E.linear_probe(x, y, x * float("nan"), y)
    with pytest.raises(SimCLRError, match="train_fraction"):
        E.split_train_test(x, y, train_fraction=1.0)
    with pytest.raises(SimCLRError, match="no train rows"):
        E.select_weight_decay(x, y, val_fraction=0.01)
