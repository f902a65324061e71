"""The pictures of the documentation, made from real Fashion-MNIST runs by the commands a user
runs (through their Python functions):

    python docs/make_pictures.py RUN [OTHER_RUN ...]

RUN: a run of ``configs/fashion_mnist_cpu.yaml`` (its loss curves, the t-SNE map of its test
features, its nearest neighbours; the augmentation preview of the preset's views); the other
runs: runs to overlay with it, as ``simclr plot RUN OTHER_RUN ...`` draws them (the sweep's
figure). Writes docs/images/*.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simclr.config import build_config  # noqa: E402
from simclr.data.datasets import channel_stats, load_train  # noqa: E402
from simclr.tools.pictures import augment_preview, embed_map, neighbors_grid  # noqa: E402
from simclr.tools.report import plot_runs  # noqa: E402

OUT = ROOT / "docs" / "images"


def main(run: Path, others: list[Path]) -> None:
    print(f"wrote {plot_runs([run], OUT / 'loss.png')}")
    print(f"wrote {embed_map(run, OUT / 'embed.png', points=2000, method='tsne')}")
    print(f"wrote {neighbors_grid(run, OUT / 'neighbors.png', queries=6, k=8)}")
    cfg = build_config(ROOT / "configs" / "fashion_mnist_cpu.yaml")
    images, _ = load_train(cfg.data)
    mean, std = channel_stats(images)
    preview = augment_preview(images[:6], cfg.augment, mean, std, OUT / "augment_preview.png",
                              n_views=6, seed=0)
    print(f"wrote {preview}")
    if others:
        overlay = plot_runs([run, *others], OUT / "overlay.png",
                            title=f"{len(others) + 1} Fashion-MNIST runs")
        print(f"wrote {overlay}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
