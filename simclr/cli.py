"""The ``simclr`` command: parse arguments, call the library, print one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import traceback
import warnings
from pathlib import Path

from simclr.errors import SimCLRError


def _split_overrides(extra: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--section.key=value`` or ``--section.key value`` -> ["section.key=value", ...]."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        key = arg[2:].partition("=")[0]
        if not arg.startswith("--") or "." not in key:
            parser.error(f"unrecognized argument '{arg}'; config overrides look like "
                         "--train.epochs=10")
        if "=" in arg:
            out.append(arg[2:])
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out.append(f"{key}={extra[i + 1]}")
            i += 1
        else:
            raise SimCLRError(f"override --{key} has no value; write it as --{key}=VALUE")
        i += 1
    return out


def _text(value) -> str:
    """A default as it is typed on the command line: ``0.08,1``, ``true``, ``none``."""
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def keys_help(width: int = 100) -> str:
    """The ``--section.key=value`` overrides and every key with its default, for ``--help``."""
    from simclr.config import OPTIM_DEFAULTS, Config

    lines = textwrap.wrap("config overrides: --section.key=value (or --section.key value); "
                          "lists as --augment.crop_scale=0.2,1. Keys and defaults (their "
                          "meaning: the docs' config keys page, written from "
                          "simclr/config/schema.py):", width)
    for section, values in Config().to_dict().items():
        items = " ".join(f"{k}={_text(v)}" for k, v in values.items())
        lines += textwrap.wrap(f"{section}: {items}", width, initial_indent="  ",
                               subsequent_indent="    ")
    per = ", ".join(f"{n} {_text(d['lr'])}/{_text(d['weight_decay'])}"
                    for n, d in OPTIM_DEFAULTS.items())
    lines += textwrap.wrap(f"optim.lr / optim.weight_decay none = the optimizer's own: {per}.",
                           width)
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simclr", description="SimCLR contrastive self-supervised learning.",
        epilog="Config keys: any --section.key=value, e.g. --train.epochs=10 --optim.name=sgd; "
               "`simclr COMMAND --help` lists them with their defaults.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)
    keys = keys_help()

    def command(name: str, text: str, overrides: bool = True, base: str = ""):
        """A subcommand; those that take config overrides list the keys in their help."""
        epilog = (f"{base}\n{keys}" if base else keys) if overrides else \
            f"simclr {name} takes no config overrides."
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                              epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)

    saved = "The run's saved config.yaml is the base; overrides change it for this command.\n"
    pre = command("pretrain", "pretrain an encoder (resumes an existing run dir)")
    pre.add_argument("--config", type=Path, help="YAML preset, e.g. configs/fashion_mnist_cpu.yaml")
    pre.add_argument("--run-dir", type=Path, help="output folder (default runs/DATA-ARCH-TIME); "
                     "an existing one is resumed")
    pre.add_argument("--force", action="store_true",
                     help="resume even though the config differs from the saved one")

    ev = command("eval", "linear probe, kNN, k-means (+ baselines) on a run's encoder",
                 base=saved + "With --encoder FILE and no run dir, data.name and data.image_size "
                 "are the ones recorded in FILE.\n")
    ev.add_argument("run_dir", type=Path, nargs="?", help="a pretraining run dir")
    ev.add_argument("--protocol", default="linear,knn,kmeans",
                    help="comma list of linear, linear_sgd, knn, kmeans, finetune (default "
                         "linear,knn,kmeans)")
    ev.add_argument("--encoder", type=Path, help="evaluate this encoder.safetensors instead")

    exp = command("export", "write a run's encoder for use outside simclr", overrides=False)
    exp.add_argument("run_dir", type=Path, metavar="RUN", help="a run dir or encoder.safetensors")
    exp.add_argument("--format", default="torchvision", choices=["torchvision", "pt2"],
                     help="torchvision: a state_dict for torchvision.models.resnet18/34/50; "
                          "pt2: a torch.export program of the whole encoder (any architecture, "
                          "normalization included) that runs with torch alone")
    exp.add_argument("--out", type=Path, help="file (default encoder_torchvision.pt or "
                     "encoder.pt2 beside the encoder)")

    prev = command("augment-preview", "PNG grid of images and their SimCLR views")
    prev.add_argument("--config", type=Path, help="YAML preset")
    prev.add_argument("--out", type=Path, default=Path("augment_preview.png"),
                      help="PNG to write (default augment_preview.png)")
    prev.add_argument("--images", type=int, default=8, help="rows: images to show")
    prev.add_argument("--views", type=int, default=6, help="views per image")
    plot = command("plot", "loss / lr / online kNN curves of one or more runs",
                   overrides=False)
    plot.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", type=Path, help="PNG (default RUN_DIR/plots/loss.png)")

    emb = command("embed", "2-D map (t-SNE, or UMAP) of test features by class", base=saved)
    emb.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    emb.add_argument("--out", type=Path, help="PNG (default RUN_DIR/plots/embed.png)")
    emb.add_argument("--points", type=int, default=2000,
                     help="at most this many test images, round-robin over classes")
    emb.add_argument("--method", default="auto", choices=["auto", "tsne", "umap"],
                     help="auto: UMAP when installed, else t-SNE")

    nbr = command("neighbors", "PNG grid of test images and their nearest train images in "
                  "feature space", base=saved)
    nbr.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    nbr.add_argument("--out", type=Path, help="PNG (default RUN_DIR/plots/neighbors.png)")
    nbr.add_argument("--queries", type=int, default=8, help="rows: test images")
    nbr.add_argument("--k", type=int, default=8, help="neighbours per query")

    swp = command("sweep", "pretrain + evaluate every cell of a grid; results table and loss "
                  "plot", base="Overrides apply to every cell; --grid values win.\n")
    swp.add_argument("--config", type=Path, help="YAML preset for every cell")
    swp.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                     help="values of one key (repeat for more keys; cells = all combinations)")
    swp.add_argument("--out", type=Path, required=True, help="sweep folder (rerun to resume)")
    swp.add_argument("--protocol", default="linear,knn,kmeans",
                     help="comma list of linear, linear_sgd, knn, kmeans, finetune (default "
                         "linear,knn,kmeans)")

    rep = command("report", "write RUN_DIR/report.md: stats, eval table, pictures, config",
                  base=saved)
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    bench = command("bench", "images/s of the full pretraining step vs the bare model step "
                    "(same model, batch, precision)")
    bench.add_argument("--config", type=Path, help="YAML preset (the model, batch, precision)")
    bench.add_argument("--steps", type=int, default=5, help="steps per timed window")
    bench.add_argument("--windows", type=int, default=3, help="timed windows (median is shown)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    bench.add_argument("--matrix", action="store_true",
                       help="a row for each of fp32/bf16 x NCHW/channels_last")
    bench.add_argument("--compile", action="store_true", help="with --matrix: also compile on")
    bench.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    bench.add_argument("--images", type=int, default=0,
                       help="also count the model TFLOP of a whole run on this many training "
                            "images (each step at its view size: augment.size_start)")
    for sp in (pre, ev, exp, prev, plot, emb, nbr, swp, rep, bench):
        # SUPPRESS: when absent here it must not reset a top-level `simclr --debug`
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")
    return p


def _pretrain(args, overrides: list[str]) -> None:
    from simclr.config import build_config

    cfg = build_config(args.config, overrides)  # before torch: a typo fails at once
    from simclr.train.pretrain import pretrain

    pretrain(cfg, args.run_dir, force=args.force)


def _eval(args, overrides: list[str]) -> None:
    from simclr.evaluation.pipeline import evaluate
    from simclr.evaluation.results import format_table
    from simclr.train.rundir import EVAL_JSON

    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    report = evaluate(args.run_dir, protocols, overrides, encoder_file=args.encoder)
    print(format_table(report))
    where = args.run_dir if args.run_dir is not None else args.encoder.parent
    print(f"wrote {where / EVAL_JSON}")


def _export(args, overrides: list[str]) -> None:
    from simclr.tools.export import export_program, export_torchvision

    _no_overrides("export", overrides)
    if args.format == "pt2":
        path, code = export_program(args.run_dir, args.out)
        print(f"wrote {path}; run it with torch alone:\n{code}")
    else:
        path, code = export_torchvision(args.run_dir, args.out)
        print(f"wrote {path}; load it into torchvision with:\n{code}")


def _augment_preview(args, overrides: list[str]) -> None:
    from simclr.config import build_config

    cfg = build_config(args.config, overrides)
    from simclr.data.datasets import channel_stats, load_train
    from simclr.tools.pictures import augment_preview

    images, _ = load_train(cfg.data)
    mean, std = cfg.augment.mean, cfg.augment.std
    if mean is None or std is None:
        mean, std = channel_stats(images)
    augment_preview(images[: args.images], cfg.augment, mean, std, args.out,
                    n_views=args.views, seed=cfg.train.seed)
    print(f"wrote {args.out}")


def _no_overrides(command: str, overrides: list[str]) -> None:
    if overrides:
        raise SimCLRError(f"simclr {command} takes no config overrides (got --{overrides[0]})")


def _plot(args, overrides: list[str]) -> None:
    from simclr.tools.report import format_stats, plot_runs, run_stats

    _no_overrides("plot", overrides)
    for run_dir in args.run_dirs:
        print(f"{run_dir}: {format_stats(run_stats(run_dir))}")
    print(f"wrote {plot_runs(args.run_dirs, args.out)}")


def _embed(args, overrides: list[str]) -> None:
    from simclr.tools.pictures import embed_map

    print(f"wrote {embed_map(args.run_dir, args.out, overrides, args.points, args.method)}")


def _neighbors(args, overrides: list[str]) -> None:
    from simclr.tools.pictures import neighbors_grid

    print(f"wrote {neighbors_grid(args.run_dir, args.out, overrides, args.queries, args.k)}")


def _sweep(args, overrides: list[str]) -> None:
    from simclr.tools.sweep import RESULTS_CSV, RESULTS_MD, format_results, sweep

    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    rows = sweep(args.config, args.grid, overrides, args.out, protocols)
    print(format_results(rows))
    print(f"wrote {args.out / RESULTS_MD}, {args.out / RESULTS_CSV}, {args.out / 'loss.png'}")


def _report(args, overrides: list[str]) -> None:
    from simclr.tools.report import write_report

    print(f"wrote {write_report(args.run_dir, overrides)}")


def _bench(args, overrides: list[str]) -> None:
    from simclr.config import build_config

    cfg = build_config(args.config, overrides)
    from simclr.tools.bench import run

    run(cfg, args.steps, args.warmup, args.windows, args.matrix, args.compile, args.json,
        args.images)


COMMANDS = {"pretrain": _pretrain, "eval": _eval, "export": _export,
            "augment-preview": _augment_preview,
            "plot": _plot, "embed": _embed, "neighbors": _neighbors, "sweep": _sweep,
            "report": _report, "bench": _bench}
# Commands that compute with torch: they re-execute once with a caching allocator (after the
# arguments parsed, so --help and usage errors never pay for it).
COMPUTE = {"pretrain", "eval", "augment-preview", "embed", "neighbors", "sweep", "report",
           "bench"}
# Commands whose work an interrupted run keeps (checkpoints): the same command resumes.
RESUMABLE = {"pretrain", "sweep"}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"simclr: warning: {message}\n"


def exit_now(code: int) -> None:
    """Flush and end the process without running native exit handlers.

    torch 2.13's CPU build can segfault while destroying oneDNN's cache of bf16 convolution
    kernels at interpreter exit (a static-destruction-order crash after all work is done),
    which would turn a finished run into exit code 139. Our files are closed by then.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real process
        exit_now(_main(None, reexec=True))
    return _main(argv)


def _main(argv: list[str] | None, reexec: bool = False) -> int:
    warnings.formatwarning = _one_line_warning
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # --help and usage errors exit here
    try:
        overrides = _split_overrides(extra, parser)
        if reexec and args.command in COMPUTE:
            from simclr.runtime.allocator import maybe_reexec

            maybe_reexec(sys.argv[1:])  # use a caching allocator if one is installed
        COMMANDS[args.command](args, overrides)
    except SimCLRError as e:
        if args.debug:
            traceback.print_exc()
        where = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 \
            else ""
        print(f"simclr: error{where}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run the same command again to resume" if args.command in RESUMABLE else ""
        print(f"simclr: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
