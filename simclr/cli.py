"""The ``simclr`` command: parse arguments, call the library, print one-line errors."""

from __future__ import annotations

import argparse
import sys
import traceback
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simclr", description="SimCLR contrastive self-supervised learning.",
        epilog="Config keys: any --section.key=value, e.g. --train.epochs=10 --optim.name=sgd "
               "(sections: data, augment, model, loss, optim, train).")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="pretrain an encoder (resumes an existing run dir)")
    pre.add_argument("--config", type=Path, help="YAML preset, e.g. configs/fashion_mnist_cpu.yaml")
    pre.add_argument("--run-dir", type=Path, help="output folder (default runs/DATA-ARCH-TIME); "
                     "an existing one is resumed")
    pre.add_argument("--force", action="store_true",
                     help="resume even though the config differs from the saved one")

    ev = sub.add_parser("eval", help="linear probe, kNN, k-means (+ baselines) on a run's encoder")
    ev.add_argument("run_dir", type=Path, nargs="?", help="a pretraining run dir")
    ev.add_argument("--protocol", default="linear,knn,kmeans",
                    help="comma list of linear, knn, kmeans, finetune (default linear,knn,kmeans)")
    ev.add_argument("--encoder", type=Path, help="evaluate this encoder.safetensors instead")

    prev = sub.add_parser("augment-preview", help="PNG grid of images and their SimCLR views")
    prev.add_argument("--config", type=Path, help="YAML preset")
    prev.add_argument("--out", type=Path, default=Path("augment_preview.png"))
    prev.add_argument("--images", type=int, default=8, help="rows: images to show")
    prev.add_argument("--views", type=int, default=6, help="views per image")
    for sp in (pre, ev, prev):
        sp.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def _pretrain(args, overrides: list[str]) -> None:
    from simclr.config import build_config
    from simclr.train import pretrain

    cfg = build_config(args.config, overrides)
    pretrain(cfg, args.run_dir, force=args.force)


def _eval(args, overrides: list[str]) -> None:
    from simclr.eval_run import EVAL_JSON, evaluate, format_table

    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    report = evaluate(args.run_dir, protocols, overrides, encoder_file=args.encoder)
    print(format_table(report))
    where = args.run_dir if args.run_dir is not None else args.encoder.parent
    print(f"wrote {where / EVAL_JSON}")


def _augment_preview(args, overrides: list[str]) -> None:
    from simclr.augment import preview
    from simclr.config import build_config
    from simclr.data import load_train
    from simclr.train import channel_stats

    cfg = build_config(args.config, overrides)
    images, _ = load_train(cfg.data)
    mean, std = cfg.augment.mean, cfg.augment.std
    if mean is None or std is None:
        mean, std = channel_stats(images)
    preview(images[: args.images], cfg.augment, mean, std, args.out, n_views=args.views,
            seed=cfg.train.seed)
    print(f"wrote {args.out}")


COMMANDS = {"pretrain": _pretrain, "eval": _eval, "augment-preview": _augment_preview}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = _split_overrides(extra, parser)
        COMMANDS[args.command](args, overrides)
    except SimCLRError as e:
        if args.debug:
            traceback.print_exc()
        print(f"simclr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simclr: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
