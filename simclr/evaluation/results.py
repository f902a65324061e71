"""``eval.json``: evaluation results that accumulate, keyed by what they are of, and their table.

A result is one protocol's numbers for one model (``simclr``, ``random_init``, ``raw_pixels``)
under given settings. Its key (`result_key`) is the model's name and the digest of its
state (``model_sha256``: another encoder, or the same run at another step, is another model),
the protocol, and ``inputs``: the config values the numbers depend on (`DATA_KEYS`, the
protocol's `PROTOCOL_KEYS`, precision and device type). Writing new results keeps every
old one whose key none of them has, so ``simclr eval --protocol finetune`` after ``simclr eval``
adds to the linear / kNN / k-means results instead of replacing them, and a repeat replaces
only its own entry. Results are kept oldest first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simclr import config as C
from simclr.config.schema import plain
from simclr.errors import SimCLRError
from simclr.train.rundir import EVAL_JSON

PROTOCOLS = ("linear", "linear_sgd", "knn", "kmeans", "finetune")
# Config keys a result depends on besides its model: the data every protocol sees, then each
# protocol's own.
DATA_KEYS = ("data.name", "data.image_size", "eval.subset", "eval.test_subset", "probe.split",
             "train.seed")
PROTOCOL_KEYS = {"linear": ("probe.val_fraction",),
                 "linear_sgd": ("probe.sgd_epochs", "probe.sgd_batch_size", "probe.sgd_lr"),
                 "knn": ("eval.knn_k", "eval.knn_temperature"),
                 "kmeans": ("eval.kmeans_init",),
                 "finetune": ("finetune.labels", "finetune.epochs", "finetune.lr",
                              "finetune.weight_decay", "finetune.batch_size")}
_MODEL_ORDER = ("simclr", "random_init", "raw_pixels")


def result_inputs(cfg: C.Config, protocol: str, precision: str,
                  device_type: str) -> dict[str, Any]:
    """The settings a ``protocol`` result depends on, as ``{"eval.knn_k": 200, ...,
    "precision": "fp32", "device": "cpu"}``."""
    out: dict[str, Any] = {}
    for key in DATA_KEYS + PROTOCOL_KEYS[protocol]:
        section, name = key.split(".")
        out[key] = getattr(getattr(cfg, section), name)
    return {**plain(out), "precision": precision, "device": device_type}


def result_key(row: dict[str, Any]) -> str:
    """What a result is of: the model (name and state digest), the protocol and its inputs."""
    return json.dumps([row.get("model"), row.get("model_sha256"), row.get("protocol"),
                       row.get("inputs")], sort_keys=True)


def merge_results(old: list[dict], new: list[dict]) -> list[dict]:
    """The old results no new one has the `result_key` of, then the new ones."""
    fresh = {result_key(r) for r in new}
    return [r for r in old if result_key(r) not in fresh] + list(new)


def read_eval(path: str | Path) -> dict[str, Any] | None:
    """An eval.json, or None where there is none.

    Raises:
        SimCLRError: the file is not JSON, or not an eval.json.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SimCLRError(f"{path} is not a readable eval.json ({e}); fix it, or move it away "
                          "to start a new one") from None
    if not isinstance(report, dict) or not isinstance(report.get("results", []), list):
        raise SimCLRError(f"{path} is not an eval.json written by simclr; move it away to start "
                          "a new one")
    return report


def protocols_of(results: list[dict], model_sha256: str | None) -> list[str]:
    """The protocols ``results`` hold for the model with that digest, in `PROTOCOLS`
    order."""
    have = {r["protocol"] for r in results if r.get("model_sha256") == model_sha256}
    return [p for p in PROTOCOLS if p in have]


def write_eval(path: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """Merge ``report``'s results into the eval.json at ``path`` (atomically) and return what
    was written: ``report``'s top-level fields, all results, and under ``protocols`` those
    held for ``report``'s encoder (``model_sha256`` of its ``simclr`` results)."""
    from simclr.runtime.files import atomic_write

    old = read_eval(path) or {}
    results = merge_results(old.get("results", []), report["results"])
    digest = next((r["model_sha256"] for r in report["results"] if r["model"] == "simclr"),
                  None)
    merged = {**report, "protocols": protocols_of(results, digest), "results": results}
    text = json.dumps(merged, indent=2)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))
    return merged


def format_table(report: dict[str, Any]) -> str:
    """One row per model (and per epoch, per split sizes where the results hold several), one
    column per metric, each cell the newest result."""
    cols = [("linear", "top1", "linear top1"), ("linear", "top5", "linear top5"),
            ("linear_sgd", "top1", "linear_sgd top1"), ("knn", "top1", "kNN top1"),
            ("kmeans", "nmi", "k-means NMI"),
            ("kmeans", "ari", "ARI"), ("kmeans", "accuracy", "cluster acc"),
            ("finetune", "top1", "finetune top1")]
    newest: dict[tuple, dict] = {}
    for r in report["results"]:  # oldest first: a later result of the same cell wins
        data = {k: v for k, v in (r.get("inputs") or {}).items() if k in DATA_KEYS}
        group = (r["model"], r.get("epoch"), json.dumps(data, sort_keys=True))
        newest.pop((group, r["protocol"]), None)
        newest[group, r["protocol"]] = r
    order = {m: i for i, m in enumerate(_MODEL_ORDER)}
    groups = sorted(dict.fromkeys(g for g, _ in newest), key=lambda g: order.get(g[0], 99))

    def sizes(group) -> tuple[int | None, int]:
        rows = [r for (g, _), r in newest.items() if g == group]
        feat = [r for r in rows if r["protocol"] != "finetune"]  # finetune's n_train: labels
        return (feat[0]["n_train"] if feat else None), rows[0]["n_test"]

    def size_text(n_train: int | None, n_test: int) -> str:
        return f"train {n_train}, test {n_test}" if n_train else f"test {n_test}"

    all_sizes = {sizes(g) for g in groups}
    epochs: dict[str, set] = {}
    for model, epoch, _ in groups:
        epochs.setdefault(model, set()).add(epoch)
    present = [c for c in cols if any(p == c[0] and r.get(c[1]) is not None
                                      for (_, p), r in newest.items())]
    lines = [["model"] + [c[2] for c in present]]
    for group in groups:
        label = group[0] + (f" epoch {group[1]}" if len(epochs[group[0]]) > 1 else "")
        if len(all_sizes) > 1:
            label += f" ({size_text(*sizes(group))})"
        row = [label]
        for proto, key, _ in present:
            r = newest.get((group, proto))
            row.append("-" if r is None or r.get(key) is None else f"{100 * r[key]:.2f}")
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    text = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in lines]
    head = f" ({size_text(*next(iter(all_sizes)))})" if len(all_sizes) == 1 else ""
    return (f"{report['dataset']} epoch {report['epoch']}{head}, percent on the test split:\n"
            + "\n".join(text))


__all__ = ["DATA_KEYS", "EVAL_JSON", "PROTOCOLS", "PROTOCOL_KEYS", "format_table",
           "merge_results", "protocols_of", "read_eval", "result_inputs", "result_key",
           "write_eval"]
