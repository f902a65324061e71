"""``simclr sweep``: pretrain and evaluate every cell of a grid of config values, then write a
results table and a loss figure overlaying all runs.

Each cell is an ordinary run dir ``OUT/<key1>=<v1>,<key2>=<v2>``, so an interrupted sweep
resumes cell by cell (and inside a cell, from its checkpoint): cells whose checkpoint reached
the planned last step and whose ``eval.json`` covers that step and the asked protocols are
skipped. Every cell's config (and batch size against its data) is checked before any
training, so a typo in the grid fails at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simclr import config as C
from simclr.errors import SimCLRError
from simclr.evaluation.results import PROTOCOLS, read_eval
from simclr.runtime.files import atomic_write
from simclr.tools.report import plot_runs, run_stats, value_text
from simclr.train.rundir import RunDir

RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
LOSS_PNG = "loss.png"
_SAFE = re.compile(r"[^A-Za-z0-9._+=-]")
# Settings every table shows beside the grid keys: the lr and weight decay each cell used
# (each optimizer has its own defaults, so they differ across an optim.name grid).
SHOWN_SETTINGS = ("optim.lr", "optim.weight_decay")
METRIC_COLUMNS = ["epochs", "final_loss", "linear_top1", "knn_top1", "nmi", "time_s",
                  "images_per_s"]


@dataclass
class Cell:
    """One grid cell: its ``(key, value text)`` items, checked config and run dir."""

    items: list[tuple[str, str]]
    cfg: C.Config
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)


def split_values(text: str) -> list[str]:
    """Split ``lars,adam`` or ``[0.08,1],[0.2,1]`` at commas outside brackets."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return values


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``["optim.name=lars,adam", ...]`` -> ``[("optim.name", ["lars", "adam"]), ...]``.

    Raises:
        SimCLRError: no grid, a spec without ``=``, an empty value or a repeated key.
    """
    if not specs:
        raise SimCLRError("give at least one --grid section.key=v1,v2")
    grid: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise SimCLRError(f"--grid '{spec}' has no values; write it as --grid "
                              "section.key=v1,v2")
        values = split_values(text)
        if any(not v for v in values):
            raise SimCLRError(f"--grid '{spec}' has an empty value; separate values by single "
                              "commas (lists in brackets: [0.2,1],[0.08,1])")
        if key in (k for k, _ in grid):
            raise SimCLRError(f"--grid key '{key}' is given twice; list all its values in one "
                              "--grid")
        grid.append((key, values))
    return grid


def cell_name(items: list[tuple[str, str]]) -> str:
    """A filesystem-safe folder name ``key1=v1,key2=v2`` (lists as ``0.2_1``)."""
    parts = []
    for key, text in items:
        value = _SAFE.sub("_", re.sub(r"\s*,\s*", "_", text.strip().strip("[]()")))
        parts.append(f"{key}={value}")
    name = ",".join(parts)
    if len(name) > 200:
        name = name[:180] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def plan(config: str | Path | None, grid: list[tuple[str, list[str]]],
         overrides: list[str] | None, out: str | Path) -> list[Cell]:
    """Build and check the config of every cell (cartesian product of the grid values).

    Raises:
        SimCLRError: a cell's config is invalid (naming the cell), or two cells would share
            a folder name.
    """
    out = Path(out)
    keys = [k for k, _ in grid]
    cells, names = [], {}
    for combo in itertools.product(*(values for _, values in grid)):
        items = list(zip(keys, combo, strict=True))
        name = cell_name(items)
        try:
            cfg = C.build_config(config, list(overrides or []) + [f"{k}={v}" for k, v in items])
        except SimCLRError as e:
            label = ",".join(f"{k}={v}" for k, v in items)
            raise SimCLRError(f"grid cell {label}: {e}") from None
        if name in names:
            raise SimCLRError(f"grid cells {names[name]} and {combo} give the same folder "
                              f"name {name}; use distinct values")
        names[name] = combo
        cells.append(Cell(items, cfg, out / name))
    _warn_shared_optim_values(config, overrides, keys, cells)
    return cells


def _warn_shared_optim_values(config, overrides, grid_keys: list[str], cells: list[Cell]) -> None:
    """Warn when a grid over optim.name hands every optimizer the same lr / weight decay that
    the preset or an override set (each optimizer has its own default)."""
    if "optim.name" not in grid_keys:
        return
    given = {o.lstrip("-").partition("=")[0] for o in overrides or []}
    if config is not None:
        given |= {f"optim.{k}" for k in (C.load_yaml(config).get("optim") or {})}
    for key in ("optim.lr", "optim.weight_decay"):
        if key in given and key not in grid_keys:
            value = value_text(getattr(cells[0].cfg.optim, key.split(".")[1]))
            warnings.warn(f"{key}={value} is set for every cell of the optim.name grid, so "
                          "every optimizer gets it; leave it unset to give each optimizer its "
                          f"own default, or add {key} to the grid", stacklevel=3)


def _check_data(cells: list[Cell]) -> dict[str, int]:
    """Load each distinct dataset once; check batch sizes; return total steps by cell."""
    from simclr.data.datasets import load_train
    from simclr.train.optim import step_counts

    sizes: dict[str, int] = {}
    steps = {}
    for cell in cells:
        key = json.dumps(cell.cfg.to_dict()["data"], sort_keys=True)
        if key not in sizes:
            sizes[key] = len(load_train(cell.cfg.data)[0])
        n, batch = sizes[key], cell.cfg.train.batch_size
        if batch > n:
            raise SimCLRError(f"grid cell {cell.name}: train.batch_size {batch} is larger "
                              f"than the dataset ({n} images); lower it or use more data")
        t = cell.cfg.train
        steps[cell.name] = step_counts(n, batch, t.epochs, cell.cfg.optim.warmup_epochs,
                                       t.step_rule)[0]
    return steps


def _check_existing(cell: Cell) -> None:
    """Refuse, before any training, a cell dir that holds a run with other settings."""
    from simclr.train.rundir import resume_changes

    if not cell.files.config.exists():
        return
    planned = cell.cfg.to_dict()
    changed = [k for k in resume_changes(cell.files.saved_config(), planned)
               if not (k in ("augment.mean", "augment.std") and planned["augment"][
                   k.split(".")[1]] is None)]
    if changed:
        raise SimCLRError(f"{cell.run_dir} holds a run with other settings ({', '.join(changed)}"
                          " differ); use another --out, or delete that folder")


def cell_state(cell: Cell, total_steps: int, protocols: list[str]) -> tuple[bool, bool]:
    """(trained to ``total_steps``, evaluated at that step with all ``protocols``)."""
    files = cell.files
    if not files.checkpoint.exists() or not files.encoder.exists():
        return False, False
    step = files.load_checkpoint()["step"]
    if step != total_steps:
        return False, False
    try:
        report = json.loads(files.eval_json.read_text())
    except (OSError, json.JSONDecodeError):
        return True, False
    return True, report.get("step") == step and set(protocols) <= set(report.get("protocols",
                                                                              []))


def _model_metric(report: dict[str, Any] | None, protocol: str, key: str) -> float | None:
    for r in reversed((report or {}).get("results", [])):  # the newest
        if r["model"] == "simclr" and r["protocol"] == protocol and r.get(key) is not None:
            return r[key]
    return None


def table_keys(grid_keys: list[str]) -> list[str]:
    """The setting columns of a results table: the grid keys, then `SHOWN_SETTINGS`."""
    return list(grid_keys) + [k for k in SHOWN_SETTINGS if k not in grid_keys]


def result_row(cell: Cell) -> dict[str, Any]:
    """The settings and metrics of a cell: its grid values and `SHOWN_SETTINGS` (as the
    cell's resolved config has them), run stats and the simclr rows of its eval.json."""
    report = read_eval(cell.files.eval_json)
    empty = {"epochs": 0, "last_loss": None, "time": None, "images_per_s": None}
    stats = run_stats(cell.run_dir) if cell.files.metrics.exists() else empty
    row: dict[str, Any] = {"run": cell.name}
    for key in table_keys([k for k, _ in cell.items]):
        section, name = key.split(".")
        row[key] = value_text(getattr(getattr(cell.cfg, section), name))
    row.update({"epochs": stats["epochs"], "final_loss": stats["last_loss"],
                "linear_top1": _model_metric(report, "linear", "top1"),
                "knn_top1": _model_metric(report, "knn", "top1"),
                "nmi": _model_metric(report, "kmeans", "nmi"), "time_s": stats["time"],
                "images_per_s": stats["images_per_s"]})
    return row


def _md(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column in ("linear_top1", "knn_top1", "nmi"):
        return f"{100 * value:.2f}"
    if column == "final_loss":
        return f"{value:.4f}"
    if column == "time_s":
        return f"{value:.1f}"
    if column == "images_per_s":
        return f"{value:.1f}"
    return str(value)


def format_results(rows: list[dict[str, Any]], keys: list[str] | None = None) -> str:
    """A Markdown table: one row per run, grid values then metrics (percent for accuracies).

    Args:
        rows: from `result_row`.
        keys: the grid keys; default every row key that is not ``run`` or a metric.
    """
    if keys is None:
        keys = [k for k in (rows[0] if rows else {}) if k != "run" and k not in METRIC_COLUMNS]
    heads = keys + ["epochs", "final loss", "linear top1 %", "kNN top1 %", "k-means NMI %",
                    "train time s", "images/s"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        lines.append("| " + " | ".join([str(row[k]) for k in keys]
                                       + [_md(row[c], c) for c in METRIC_COLUMNS]) + " |")
    return "\n".join(lines)


def write_results(rows: list[dict[str, Any]], keys: list[str], out: Path) -> tuple[Path, Path]:
    """Write ``out/results.md`` and ``out/results.csv`` (raw fractions, full precision)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["run", *keys, *METRIC_COLUMNS],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    table = (
        f"# Sweep {out.name}: {len(rows)} runs\n\n"
        "Accuracies and NMI in percent on the test split, for the simclr encoder at its last "
        "epoch (linear probe with weight decay chosen on a train hold-out, cosine kNN, k-means "
        "with k = classes); settings in each run's `eval.json`. optim.lr: the base lr each cell "
        "used, before lr_scaling with the batch (each optimizer has its own default). Loss: the "
        "last epoch's mean NT-Xent. Train time: training seconds.\n\n"
        + format_results(rows, keys) + f"\n\n![loss of every run]({LOSS_PNG})\n")
    csv_path = atomic_write(out / RESULTS_CSV, lambda tmp: tmp.write_text(buffer.getvalue()))
    md_path = atomic_write(out / RESULTS_MD, lambda tmp: tmp.write_text(table))
    return md_path, csv_path


def sweep(config: str | Path | None, grid_specs: list[str], overrides: list[str] | None,
          out: str | Path, protocols: list[str] | tuple = ("linear", "knn", "kmeans"),
          log=print) -> list[dict[str, Any]]:
    """Pretrain + evaluate every grid cell (skipping finished ones), then write the results.

    Args:
        config: a YAML preset for every cell, or None for the defaults.
        grid_specs: ``section.key=v1,v2`` strings; cells are their cartesian product.
        overrides: ``section.key=value`` strings for every cell (the grid's values win).
        out: the sweep folder; cells go to ``out/<key>=<value>,...``.
        protocols: evaluation protocols (see `simclr.evaluation.pipeline.evaluate`).

    Returns:
        One row per cell (see `result_row`), in grid order.
    """
    from simclr.evaluation.pipeline import evaluate
    from simclr.train.pretrain import pretrain
    from simclr.train.rundir import check_writable

    protocols = list(protocols)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise SimCLRError(f"unknown protocol '{bad[0] if bad else ''}'; choose from "
                          f"{', '.join(PROTOCOLS)}")
    grid = parse_grid(grid_specs)
    out = Path(out)
    cells = plan(config, grid, overrides, out)
    for cell in cells:
        _check_existing(cell)
    total_steps = _check_data(cells)
    check_writable(out)
    failed = []
    for i, cell in enumerate(cells, 1):
        total = total_steps[cell.name]
        head = f"[{i}/{len(cells)}] {cell.name}"
        try:
            trained, evaluated = cell_state(cell, total, protocols)
            if trained and evaluated:
                log(f"{head}: finished, skipped")
                continue
            if not trained:
                log(f"{head}: training")
                pretrain(cell.cfg, cell.run_dir, log=log)
            log(f"{head}: evaluating ({', '.join(protocols)})")
            evaluate(cell.run_dir, protocols, list(overrides or [])
                     + [f"{k}={v}" for k, v in cell.items], log=log)
        except SimCLRError as e:  # one diverged or busy cell does not stop the others
            log(f"{head}: failed: {e}")
            failed.append(cell.name)
    rows = [result_row(cell) for cell in cells]
    write_results(rows, table_keys([k for k, _ in grid]), out)
    plotted = [c.run_dir for c in cells if c.files.metrics.exists()]
    if plotted:
        plot_runs(plotted, out / LOSS_PNG, title=f"sweep {out.name}: {len(plotted)} runs")
    if failed:
        raise SimCLRError(f"{len(failed)} of {len(cells)} grid cells failed ({', '.join(failed)}"
                          f"); their rows in {out / RESULTS_MD} are incomplete; fix and rerun "
                          "the same command to finish them")
    return rows

__all__ = ["Cell", "cell_name", "cell_state", "format_results", "parse_grid", "plan",
           "result_row", "split_values", "sweep", "table_keys", "write_results"]
