"""Evaluation protocols as pure functions on feature tensors: kNN and the linear probe.

Honest by construction: the linear probe's weight decay is chosen by ``select_weight_decay``,
which is given only the train split; test data is used once, after the choice, to report.
Features come from ``extract_features`` (frozen encoder, no augmentation) or, for the raw-pixel
baseline, ``pixel_features``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.errors import SimCLRError
from simclr.evaluation.splits import stratified_split
from simclr.train.optim import LARS, lr_at, scaled_lr, set_lr, step_counts

# 0 plus log-spaced L2 strengths; see ``fit_probe`` for the objective they enter.
WEIGHT_DECAYS: tuple[float, ...] = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def check_features(feats: Tensor, labels: Tensor, name: str) -> None:
    """SimCLRError unless feats are finite N x D and labels N non-negative integers."""
    if feats.ndim != 2:
        raise SimCLRError(f"{name} features must be N x D, got shape {tuple(feats.shape)}; "
                          "flatten them first")
    if labels.ndim != 1 or labels.shape[0] != feats.shape[0] or labels.is_floating_point():
        raise SimCLRError(f"{name} labels must be {feats.shape[0]} integers (one per row), got "
                          f"{labels.dtype} of shape {tuple(labels.shape)}; fix the labels")
    if labels.numel() and int(labels.min()) < 0:
        raise SimCLRError(f"{name} labels contain negative values (unlabeled rows?); "
                          "keep only labeled rows for evaluation")
    if not torch.isfinite(feats).all():
        raise SimCLRError(f"{name} features contain NaN or inf (a diverged encoder?); "
                          "evaluate an earlier checkpoint")


def split_train_test(feats: Tensor, labels: Tensor, train_fraction: float = 0.8,
                     seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The "80/20 protocol" for datasets with a single labeled set: a stratified, seeded split.

    Returns:
        ``train_feats, train_labels, test_feats, test_labels``.
    """
    check_features(feats, labels, "split")
    if not 0.0 < train_fraction < 1.0:
        raise SimCLRError(f"train_fraction must be in (0, 1), got {train_fraction}; e.g. 0.8")
    train_idx, test_idx = stratified_split(labels, 1.0 - train_fraction, seed)
    train_idx, test_idx = train_idx.to(feats.device), test_idx.to(feats.device)
    return feats[train_idx], labels[train_idx], feats[test_idx], labels[test_idx]


def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, k: int = 200,
                temperature: float = 0.1, num_classes: int | None = None,
                chunk: int = 1024) -> Tensor:
    """Weighted kNN (InstDisc / SimCLR monitor rule): train N x D bank, test M x D -> M labels.

    Cosine similarity on L2-normalized features; each test row's ``k`` most similar train rows
    (``k`` clipped to N) vote ``exp(sim / temperature)`` for their class; the class with the
    largest summed vote wins (ties: the lowest class id). Votes are computed as
    ``exp((sim - max_sim) / temperature)``, the same argmax without overflow. Runs on the train
    features' device, ``chunk`` test rows at a time; returns int64 labels on that device.
    """
    check_features(train_feats, train_labels, "kNN train")
    if train_feats.shape[0] == 0 or test_feats.shape[-1] != train_feats.shape[1]:
        raise SimCLRError(f"kNN needs a non-empty train bank and test features of its dimension, "
                          f"got {tuple(train_feats.shape)} and {tuple(test_feats.shape)}")
    device = train_feats.device
    bank = F.normalize(train_feats.float(), dim=1)  # N x D
    bank_labels = train_labels.to(device).long()
    num_classes = num_classes or int(bank_labels.max()) + 1
    k = min(k, bank.shape[0])
    preds = torch.empty(test_feats.shape[0], dtype=torch.long, device=device)
    for i in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[i:i + chunk].to(device).float(), dim=1)  # B x D
        sim, idx = (q @ bank.T).topk(k, dim=1)  # B x k, sorted descending
        weight = ((sim - sim[:, :1]) / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=device)
        votes.scatter_add_(1, bank_labels[idx], weight)  # B x classes
        preds[i:i + chunk] = votes.argmax(1)
    return preds


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor,
                 test_labels: Tensor, k: int = 200, temperature: float = 0.1,
                 num_classes: int | None = None, chunk: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] of ``knn_predict`` on the test split."""
    check_features(test_feats, test_labels, "kNN test")
    preds = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes, chunk)
    return (preds.cpu() == test_labels.cpu()).float().mean().item()


def _standardize(feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, mean, std)``: float32 CPU copy of N x D features with zero mean, unit variance."""
    x = feats.detach().to("cpu", torch.float32, copy=True)
    mean = x.mean(0)
    std = ((x - mean) ** 2).mean(0).sqrt_().clamp_min_(1e-6)
    return x.sub_(mean).div_(std), mean, std


def _fit_softmax(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int,
                 init: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
    """L-BFGS on standardized x N x D -> (weight classes x D, bias classes); see ``fit_probe``."""
    n = x.shape[0]
    target = F.one_hot(y, num_classes).float()  # N x classes
    w = torch.zeros(num_classes, x.shape[1]) if init is None else init["weight"].clone()
    b = torch.zeros(num_classes) if init is None else init["bias"].clone()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=10,
                            tolerance_grad=1e-7, tolerance_change=1e-9,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:  # gradients by hand: one X W^T and one G^T X per evaluation
        with torch.no_grad():
            logits = torch.addmm(b, x, w.T)  # N x classes
            lse = logits.logsumexp(1)  # N
            loss = (lse.sum() - (logits * target).sum()) / n + 0.5 * weight_decay * (w * w).sum()
            g = logits.sub_(lse[:, None]).exp_().sub_(target).div_(n)  # dloss/dlogits
            w.grad = torch.addmm(w, g.T, x, beta=weight_decay)  # classes x D
            b.grad = g.sum(0)
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_probe(feats: Tensor, labels: Tensor, weight_decay: float, num_classes: int | None = None,
              max_iter: int = 100, init: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Multinomial logistic regression (linear softmax classifier with bias) on N x D features.

    Features are standardized with their own (this train set's) per-dimension mean and std.
    Minimizes ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (no penalty on the bias)
    full-batch with L-BFGS (strong Wolfe line search), float32 on the CPU, for at most
    ``max_iter`` iterations, from zero weights or from ``init``'s (a warm start: the same optimum
    when ``weight_decay > 0``, reached in fewer steps).

    Returns:
        ``{"mean": D, "std": D, "weight": classes x D, "bias": classes}`` for ``probe_logits``.
    """
    check_features(feats, labels, "probe")
    y = labels.cpu().long()
    x, mean, std = _standardize(feats)
    w, b = _fit_softmax(x, y, num_classes or int(y.max()) + 1, weight_decay, max_iter, init)
    return {"mean": mean, "std": std, "weight": w, "bias": b}


def probe_logits(probe: dict[str, Tensor], feats: Tensor) -> Tensor:
    """Logits M x classes of a ``fit_probe`` classifier on M x D features (CPU, float32)."""
    x = (feats.detach().to("cpu", torch.float32) - probe["mean"]) / probe["std"]
    return torch.addmm(probe["bias"], x, probe["weight"].T)


def _topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    top = logits.topk(k, dim=1).indices  # M x k
    return (top == labels.cpu().long()[:, None]).any(1).float().mean().item()


def select_weight_decay(train_feats: Tensor, train_labels: Tensor, val_fraction: float = 0.1,
                        weight_decays: Sequence[float] = WEIGHT_DECAYS, seed: int = 0,
                        max_iter: int = 100, num_classes: int | None = None) -> dict:
    """Choose the probe's weight decay on a stratified hold-out of the TRAIN split only.

    ``stratified_split(train_labels, val_fraction, seed)`` holds out validation rows; a probe
    (``fit_probe`` semantics, standardized with the remaining rows' stats) is fit on the rest
    for every weight decay, largest first, each warm-started from the previous one, and scored
    by validation top-1. Ties go to the larger weight decay. This function never sees test data.

    Returns:
        ``{"weight_decay", "val_top1" (of the chosen one), "grid": {wd: val_top1}, "n_fit",
        "n_val", "probe" (the chosen fit, a warm start for the refit)}``.
    """
    check_features(train_feats, train_labels, "train")
    if not weight_decays:
        raise SimCLRError("weight_decays is empty; give at least one value")
    labels = train_labels.cpu().long()
    num_classes = num_classes or int(labels.max()) + 1
    fit_idx, val_idx = stratified_split(labels, val_fraction, seed)
    if val_idx.numel() == 0:
        raise SimCLRError(f"val_fraction {val_fraction} holds out no train rows; raise it or "
                          "use more labeled training data")
    feats = train_feats.cpu()
    x, mean, std = _standardize(feats[fit_idx])
    grid, probes, probe = {}, {}, None
    for wd in sorted({float(v) for v in weight_decays}, reverse=True):
        w, b = _fit_softmax(x, labels[fit_idx], num_classes, wd, max_iter, probe)
        probe = {"mean": mean, "std": std, "weight": w, "bias": b}
        logits = probe_logits(probe, feats[val_idx])
        grid[wd], probes[wd] = _topk_accuracy(logits, labels[val_idx], 1), probe
    best = max(grid, key=lambda wd: (grid[wd], wd))
    return {"weight_decay": best, "val_top1": grid[best], "grid": dict(sorted(grid.items())),
            "n_fit": int(fit_idx.numel()), "n_val": int(val_idx.numel()), "probe": probes[best]}


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor,
                 test_labels: Tensor, val_fraction: float = 0.1,
                 weight_decays: Sequence[float] = WEIGHT_DECAYS, seed: int = 0,
                 max_iter: int = 100) -> dict:
    """Linear-probe protocol: select weight decay on train (``select_weight_decay``), refit on
    the whole train split (validation rows included) with it, evaluate once on test.

    Returns:
        ``{"top1", "top5" (None under 5 classes), "weight_decay", "val_top1", "grid",
        "n_train", "n_val", "n_test", "feature_dim"}``; accuracies in [0, 1].
    """
    check_features(train_feats, train_labels, "train")
    check_features(test_feats, test_labels, "test")
    if test_feats.shape[1] != train_feats.shape[1]:
        raise SimCLRError(f"train features are {train_feats.shape[1]}-D but test features "
                          f"{test_feats.shape[1]}-D; extract both with the same encoder")
    num_classes = int(train_labels.max()) + 1
    if test_labels.numel() and int(test_labels.max()) >= num_classes:
        raise SimCLRError(f"test labels contain class {int(test_labels.max())} that the train "
                          "split never shows; evaluate on classes present in train")
    sel = select_weight_decay(train_feats, train_labels, val_fraction, weight_decays, seed,
                              max_iter, num_classes)
    probe = fit_probe(train_feats, train_labels, sel["weight_decay"], num_classes, max_iter,
                      init=sel["probe"])
    logits = probe_logits(probe, test_feats)  # test data is touched here, once
    return {"top1": _topk_accuracy(logits, test_labels, 1),
            "top5": _topk_accuracy(logits, test_labels, 5) if num_classes >= 5 else None,
            "weight_decay": sel["weight_decay"], "val_top1": sel["val_top1"],
            "grid": sel["grid"], "n_train": int(train_feats.shape[0]), "n_val": sel["n_val"],
            "n_test": int(test_feats.shape[0]), "feature_dim": int(train_feats.shape[1])}


def linear_sgd(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor,
               test_labels: Tensor, epochs: int = 100, batch_size: int = 512, lr: float = 0.1,
               momentum: float = 0.9, seed: int = 0) -> dict:
    """The tf reference's linear evaluation on frozen features (google-research/simclr README,
    CIFAR-10 ``--train_mode=finetune --fine_tune_after_block=4``).

    A linear layer with bias, zero-initialized (``zero_init_logits_layer``), on the raw
    features (no standardization), trained with softmax cross-entropy by SGD with Nesterov
    momentum 0.9 (the lr inside the momentum, as tf's), peak lr ``lr x B/256``, no warmup,
    cosine decay over the reference's ``N x epochs // B + 1`` steps, no weight decay, batches
    drawn from an endless stream of seeded epoch permutations. No hyper-parameter is chosen
    on any split: they are the reference's. Evaluated once on test.

    Deliberate difference: the reference re-augments (random crop + flip) the train images every
    step; here the features are extracted once without augmentation, like the ``linear`` probe.

    Returns:
        ``{"top1", "top5" (None under 5 classes), "steps", "peak_lr", "n_train", "n_test",
        "feature_dim", "weight" (classes x D), "bias"}``; accuracies in [0, 1].
    """
    check_features(train_feats, train_labels, "train")
    check_features(test_feats, test_labels, "test")
    x, y = train_feats.detach().to("cpu", torch.float32), train_labels.cpu().long()
    n, dim = x.shape
    num_classes = int(y.max()) + 1
    batch_size = min(batch_size, n)
    total, _ = step_counts(n, batch_size, epochs, 0.0, "reference")
    peak = scaled_lr(lr, batch_size, "linear")
    head = nn.Linear(dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    # LARS without adaptation or decay is tf's momentum optimizer: v = m v + lr g; w -= m v + lr g
    opt = LARS([{"params": head.parameters(), "lars_adapt": False}], lr=0.0, momentum=momentum,
               nesterov=True)
    g = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for step in range(total):
        while order.numel() < batch_size:  # the next epoch's permutation joins the stream
            order = torch.cat([order, torch.randperm(n, generator=g)])
        idx, order = order[:batch_size], order[batch_size:]
        set_lr(opt, lr_at(step, peak, 0, total))
        loss = F.cross_entropy(head(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = head(test_feats.detach().to("cpu", torch.float32))  # test touched once
    return {"top1": _topk_accuracy(logits, test_labels, 1),
            "top5": _topk_accuracy(logits, test_labels, 5) if num_classes >= 5 else None,
            "steps": total, "peak_lr": peak, "n_train": n, "n_test": int(test_feats.shape[0]),
            "feature_dim": dim, "weight": head.weight.detach(), "bias": head.bias.detach()}
