"""Reading a run's ``metrics.jsonl``, its summary numbers, the loss/lr/kNN figure of one or
more runs, and the one-page ``report.md``.

``metrics.jsonl`` (written by `simclr.train.pretrain`) holds one JSON object a line:
``kind: window`` every ``train.log_every`` steps (loss = mean over the window, lr,
images_per_s, time), ``kind: epoch`` at every epoch end (loss = mean over the epoch) and
``kind: knn`` after each online kNN evaluation (knn_top1). ``time`` is cumulative training
seconds (data loading, evaluation and restarts excluded).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from simclr import config as C
from simclr.errors import SimCLRError  # noqa: E402
from simclr.evaluation.results import format_table, read_eval
from simclr.runtime.files import atomic_write
from simclr.tools.pictures import save_figure
from simclr.train.rundir import EVAL_JSON, PLOTS, RunDir, read_metrics

LOSS_PNG = "loss.png"
# Keys left out of legends: measured from the data, or not changing what is computed.
_LEGEND_SKIP = {"augment.mean", "augment.std", "train.progress", "train.log_every",
                "train.checkpoint_every", "train.device"}
FIG_SIZE = (15.0, 5.0)  # inches at DPI: a 1500 x 500 px picture
DPI = 100


def run_stats(run_dir: str | Path) -> dict[str, Any]:
    """Summary numbers of a run, computed from ``metrics.jsonl`` alone.

    Losses are the per-epoch means (``kind: epoch`` lines); a run that has not finished an
    epoch uses its window means instead.

    Returns:
        ``first_loss``, ``last_loss``, ``lowest_loss`` (None without any loss line),
        ``epochs`` (finished epochs), ``steps`` (last step logged), ``time`` (training
        seconds, the largest ``time``), ``images_per_s`` (mean of the window lines'
        ``images_per_s``, None without windows), ``knn_top1`` (the last online kNN top-1,
        a fraction, or None).
    """
    records = read_metrics(run_dir)
    windows = [r for r in records if r.get("kind") == "window"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    knn = [r for r in records if r.get("kind") == "knn"]
    losses = [r["loss"] for r in (epochs or windows)]
    speeds = [r["images_per_s"] for r in windows]
    return {
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "lowest_loss": min(losses) if losses else None,
        "epochs": max((r["epoch"] for r in epochs), default=0),
        "steps": max((r.get("step", 0) for r in records), default=0),
        "time": max((r.get("time", 0.0) for r in records), default=0.0),
        "images_per_s": sum(speeds) / len(speeds) if speeds else None,
        "knn_top1": knn[-1]["knn_top1"] if knn else None,
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_stats(stats: dict[str, Any]) -> str:
    """One line: ``loss first 5.4321 last 4.1234 lowest 4.1000 | epochs 2 | ...``."""
    knn = "-" if stats["knn_top1"] is None else f"{100 * stats['knn_top1']:.2f}%"
    return (f"loss first {_num(stats['first_loss'], '.4f')} last "
            f"{_num(stats['last_loss'], '.4f')} lowest {_num(stats['lowest_loss'], '.4f')} | "
            f"epochs {stats['epochs']} | steps {stats['steps']} | time {stats['time']:.1f}s | "
            f"{_num(stats['images_per_s'], '.1f')} images/s | kNN top1 {knn}")


def value_text(value: Any) -> str:
    """A config value as short text: ``0.2,1`` for lists, ``0.001`` for floats."""
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def legend_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """A label per run: the config keys that differ between the runs (``optim.name=sgd``), or
    the directory name where nothing differs (or the label would repeat another run's)."""
    configs = []
    for d in run_dirs:
        run = RunDir(d)
        configs.append(run.saved_config() if run.config.exists() else {})
    keys = sorted({k for c in configs[1:] for k in C.diff(configs[0], c)} - _LEGEND_SKIP)
    labels = []
    for d, cfg in zip(run_dirs, configs, strict=True):
        parts = []
        for key in keys:
            section, name = key.split(".")
            parts.append(f"{key}={value_text(cfg.get(section, {}).get(name))}")
        labels.append(", ".join(parts) or Path(d).name)
    if len(set(labels)) < len(labels):
        labels = [f"{Path(d).name}: {lab}" if lab != Path(d).name else lab
                  for d, lab in zip(run_dirs, labels, strict=True)]
    return labels


def _steps_per_epoch(records: list[dict[str, Any]]) -> float | None:
    ends = [r for r in records if r.get("kind") == "epoch" and r.get("epoch")]
    return ends[0]["step"] / ends[0]["epoch"] if ends else None


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None,
              title: str | None = None) -> Path:
    """Draw loss (window points and epoch means), lr and online kNN top-1 of the runs.

    Three panels side by side, ``FIG_SIZE`` at ``DPI``; the x axis is epochs (steps for runs
    that have not finished an epoch); one colour per run, labelled by `legend_labels`.

    Args:
        run_dirs: one or more run directories.
        out: PNG to write; default ``<first run dir>/plots/loss.png``.
        title: figure title; default the run's name, or "N runs".

    Returns:
        The PNG path.
    """
    if not run_dirs:
        raise SimCLRError("give at least one run dir to plot")
    run_dirs = [Path(d) for d in run_dirs]
    runs = [read_metrics(d) for d in run_dirs]
    labels = legend_labels(run_dirs)
    per_epoch = all(_steps_per_epoch(r) for r in runs)
    fig, (ax_loss, ax_lr, ax_knn) = plt.subplots(1, 3, figsize=FIG_SIZE, dpi=DPI)
    colors = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    any_knn = False
    for i, (records, label) in enumerate(zip(runs, labels, strict=True)):
        color = colors(i % colors.N)
        style = ["-", "--", "-.", ":"][i % 4]
        mark = "osD^v"[i % 5]
        spe = _steps_per_epoch(records) if per_epoch else 1.0

        def xy(kind: str, key: str, recs=records, spe=spe) -> tuple[list, list]:
            sel = [r for r in recs if r.get("kind") == kind and r.get(key) is not None]
            return [r["step"] / spe for r in sel], [r[key] for r in sel]

        x, y = xy("window", "loss")
        ax_loss.plot(x, y, ".", color=color, alpha=0.45, markersize=4, linewidth=0.8,
                     linestyle="none" if _steps_per_epoch(records) else style)
        x, y = xy("epoch", "loss")
        ax_loss.plot(x, y, marker=mark, linestyle=style, color=color, linewidth=1.8,
                     markersize=4, label=label)
        x, y = xy("window", "lr")
        ax_lr.plot(x, y, linestyle=style, color=color, linewidth=1.8,
                   marker="." if len(x) < 50 else None)
        x, y = xy("knn", "knn_top1")
        if x:
            any_knn = True
            ax_knn.plot(x, [100 * v for v in y], marker=mark, linestyle=style, color=color,
                        linewidth=1.8, markersize=4)
    xlabel = "epoch" if per_epoch else "step"
    ax_loss.set(title="training loss (dots: windows, line: epoch means)", xlabel=xlabel,
                ylabel="loss")
    ax_lr.set(title="learning rate", xlabel=xlabel, ylabel="lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_knn.set(title="online kNN top-1 (test split)", xlabel=xlabel, ylabel="top-1 (%)")
    if not any_knn:
        ax_knn.text(0.5, 0.5, "no online kNN lines\n(set eval.every > 0 to record them)",
                    ha="center", va="center", transform=ax_knn.transAxes, fontsize=11,
                    color="0.4")
        ax_knn.set_xticks([])
        ax_knn.set_yticks([])
    for ax in (ax_loss, ax_lr, ax_knn):
        ax.grid(True, alpha=0.3)
        if any_knn or ax is not ax_knn:
            ax.set_xlim(left=0)
    fig.suptitle(title or (run_dirs[0].name if len(runs) == 1 else f"{len(runs)} runs"),
                 fontsize=13)
    bottom = 0.0
    if len(runs) > 1:  # one legend below the panels, as many columns as the labels allow
        wrapped = [textwrap.fill(lab, 70) for lab in labels]
        for line, text in zip(ax_loss.get_lines()[1::2], wrapped, strict=True):
            line.set_label(text)
        width = max(len(line) for lab in wrapped for line in lab.splitlines())
        ncol = max(1, min(len(runs), 150 // (width + 6)))
        rows = sum(max(lab.count("\n") + 1 for lab in wrapped[i:i + ncol])
                   for i in range(0, len(runs), ncol))
        bottom = min(0.035 + 0.042 * rows, 0.5)
        fig.legend(loc="lower center", ncol=ncol, fontsize=9.5, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0.0, bottom, 1.0, 0.95), w_pad=2.0)
    return save_figure(fig, out if out is not None else RunDir(run_dirs[0]).plots / LOSS_PNG)


def _stale(picture: Path, run_dir: Path) -> bool:
    """True when ``picture`` is missing or older than the run's metrics or encoder."""
    if not picture.exists():
        return True
    run = RunDir(run_dir)
    sources = [run.metrics, run.encoder]
    newest = max((os.path.getmtime(s) for s in sources if s.exists()), default=0.0)
    return os.path.getmtime(picture) < newest


def write_report(run_dir: str | Path, overrides: list[str] | None = None,
                 log=print) -> Path:
    """Write ``run_dir/report.md``: run stats, loss figure, eval table, pictures, config.

    Pictures under ``run_dir/plots/`` are made when missing or older than the run's
    metrics/encoder; one that cannot be made (say the dataset is not on this machine) is
    replaced by a note with the reason.

    Args:
        run_dir: a pretraining run dir.
        overrides: ``section.key=value`` strings for the pictures (``data.root=...``).

    Returns:
        The path of ``report.md``.
    """
    from simclr.tools.pictures import EMBED_PNG, NEIGHBORS_PNG, embed_map, neighbors_grid

    run_dir, run = Path(run_dir), RunDir(run_dir)
    run.saved_config()  # not a run dir: the one error, before any work
    plots = run.plots
    lines = [f"# SimCLR run `{run_dir.name}`", ""]
    stats = run_stats(run_dir)
    lines += ["## Training", "", "| first loss | last loss | lowest loss | epochs | steps | "
              "training time | images/s | online kNN top-1 |", "|" + "---|" * 8,
              f"| {_num(stats['first_loss'], '.4f')} | {_num(stats['last_loss'], '.4f')} | "
              f"{_num(stats['lowest_loss'], '.4f')} | {stats['epochs']} | {stats['steps']} | "
              f"{stats['time']:.1f} s | {_num(stats['images_per_s'], '.1f')} | "
              + ("-" if stats["knn_top1"] is None else f"{100 * stats['knn_top1']:.2f}%")
              + " |", "", "Losses are per-epoch means of NT-Xent (mean over the 2N views).", ""]
    if _stale(plots / LOSS_PNG, run_dir):
        plot_runs([run_dir], plots / LOSS_PNG)
    lines += [f"![loss, learning rate and online kNN]({PLOTS}/{LOSS_PNG})", ""]

    lines += ["## Evaluation", ""]
    report = read_eval(run.eval_json)
    if report is not None:
        lines += ["```text", format_table(report), "```", "",
                  f"Protocols and their settings: `{EVAL_JSON}`.", ""]
    else:
        lines += [f"No `{EVAL_JSON}` yet: run `simclr eval {run_dir}` (linear probe, kNN, "
                  "k-means, with baselines), then `simclr report` again.", ""]

    lines += ["## Pictures", ""]
    for name, make, caption in (
            (EMBED_PNG, embed_map, "2-D map of test features, coloured by class"),
            (NEIGHBORS_PNG, neighbors_grid, "test queries and their nearest train images")):
        if _stale(plots / name, run_dir):
            try:
                make(run_dir, plots / name, overrides, log=log)
            except SimCLRError as e:
                lines += [f"*{caption}: not made ({e}).*", ""]
                continue
        lines += [f"![{caption}]({PLOTS}/{name})", ""]

    lines += ["## Config", "", "```yaml", run.config.read_text().rstrip(), "```", ""]
    text = "\n".join(lines)
    return atomic_write(run.report, lambda tmp: tmp.write_text(text))


__all__ = ["format_stats", "legend_labels", "plot_runs", "read_metrics", "run_stats",
           "value_text", "write_report"]
