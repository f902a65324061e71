"""Pictures of what an encoder learned: a 2-D map of test features (t-SNE, or UMAP when the
``umap`` package is installed) and a grid of test queries with their nearest train images;
and of what it is trained on: a labelled grid of images and their SimCLR views.

Both use the run's own encoder (`simclr.evaluation.encoder.load_encoder`) on its labeled data
(`simclr.evaluation.splits.eval_data`); ``section.key=value`` overrides change the data
(``data.root=...``, ``eval.subset=5000`` to cap the neighbour bank, ``train.device=cpu``).
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from simclr import config as C  # noqa: E402
from simclr.errors import SimCLRError  # noqa: E402
from simclr.runtime.files import atomic_write  # noqa: E402
from simclr.train.rundir import RunDir, encoder_file  # noqa: E402

EMBED_PNG = "embed.png"
NEIGHBORS_PNG = "neighbors.png"
DPI = 100
CLASS_NAMES = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"],
    "stl10": ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
              "truck"],
    "fashion_mnist": ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle boot"],
    "mnist": [str(i) for i in range(10)],
}


def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> C.Config:
    """The run's saved ``config.yaml`` with ``overrides`` applied (checked)."""
    return RunDir(run_dir).load_config(overrides)


def class_names(cfg: C.Config, num_classes: int) -> list[str]:
    """Readable class names: the dataset's own, a folder's sorted class subfolders, or numbers."""
    names = CLASS_NAMES.get(cfg.data.name)
    if names is None and cfg.data.name == "folder" and cfg.data.root:
        root = Path(cfg.data.root).expanduser()
        bases = [root / "train", root / "test"] if (root / "test").is_dir() else [root]
        names = sorted({d.name for b in bases if b.is_dir() for d in b.iterdir()
                        if d.is_dir() and not d.name.startswith(".")})
    if not names or len(names) < num_classes:
        names = [str(i) for i in range(num_classes)]
    return names


def pick_stratified(labels: Tensor, n: int) -> Tensor:
    """Indices of ``n`` items taken round-robin over the classes (class 0's first item, class
    1's first, ..., then every class's second), each class in file order. Deterministic.
    """
    n = min(n, len(labels))
    order = torch.argsort(labels, stable=True)  # grouped by class, file order inside
    grouped = labels[order]
    rank = torch.arange(len(labels)) - torch.searchsorted(grouped, grouped)  # place in class
    span = int(grouped[-1] - grouped[0]) + 1 if len(labels) else 1
    key = rank * span + (grouped - grouped[0])
    return order[torch.argsort(key, stable=True)[:n]]


def _encoder_and_data(run_dir: Path, overrides: list[str] | None, bank: bool = False):
    """The run's config, encoder, labeled data, device and precision; with ``bank`` the data
    follows ``data.subset`` (`simclr.evaluation.splits.monitor_config`)."""
    from simclr.evaluation.encoder import load_encoder
    from simclr.evaluation.splits import eval_data, monitor_config
    from simclr.runtime.compute import resolve_device, resolve_precision

    cfg = run_config(run_dir, overrides)
    enc = load_encoder(encoder_file(run_dir))
    data = eval_data(monitor_config(cfg) if bank else cfg)
    shape = (enc.meta["in_channels"], enc.meta["image_size"], enc.meta["image_size"])
    if tuple(data["train"][0].shape[1:]) != shape:
        raise SimCLRError(f"the encoder was trained on {shape[0]}x{shape[1]} px images but the "
                          f"data is {tuple(data['train'][0].shape[1:])}; set data.* to match")
    device = resolve_device(cfg.train.device)
    return cfg, enc, data, device, resolve_precision(cfg.train.precision, device)


def _features(enc, split: str, images: Tensor, labels: Tensor, cfg: C.Config, device,
              precision: str, cache_dir: Path | None) -> Tensor:
    from simclr.evaluation.cache import features

    return features(enc, {split: (images, labels)}, cfg, device, precision, cache_dir)[split]


def _to_2d(feats: Tensor, method: str, seed: int) -> tuple[np.ndarray, str]:
    """N x D features -> N x 2 coordinates, and the method's name."""
    x = F.normalize(feats.float(), dim=1).numpy()  # cosine geometry, as in kNN
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") else "tsne"
    if method == "umap":
        import umap

        return umap.UMAP(metric="cosine", random_state=seed).fit_transform(x), "UMAP"
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed)
    return tsne.fit_transform(x), "t-SNE"


def embed_map(run_dir: str | Path, out: str | Path | None = None,
              overrides: list[str] | None = None, points: int = 2000, method: str = "auto",
              log=print) -> Path:
    """Write a 2-D map of the run's test-split features, one colour per class.

    Args:
        run_dir: a run dir with ``encoder.safetensors``.
        out: PNG to write; default ``run_dir/plots/embed.png``. 900 x 800 px.
        overrides: ``section.key=value`` strings applied to the run's config.
        points: at most this many test images, taken round-robin over the classes.
        method: ``tsne``, ``umap`` or ``auto`` (UMAP when installed, else t-SNE).

    Returns:
        The PNG path.
    """
    if points < 2:
        raise SimCLRError("--points must be at least 2")
    if method not in ("auto", "tsne", "umap"):
        raise SimCLRError(f"unknown embedding method '{method}'; use tsne, umap or auto")
    if method == "umap" and not importlib.util.find_spec("umap"):
        raise SimCLRError("method umap needs the umap-learn package: pip install umap-learn, "
                          "or use --method tsne")
    run_dir = Path(run_dir)
    cfg, enc, data, device, precision = _encoder_and_data(run_dir, overrides)
    images, labels = data["test"]
    full = points >= len(labels)  # the whole split, in file order: evaluate's feature cache
    idx = torch.arange(len(labels)) if full else pick_stratified(labels, points)
    feats = _features(enc, "test", images[idx], labels[idx], cfg, device, precision,
                      RunDir(run_dir).features if full else None)
    labels = labels[idx].numpy()
    coords, name = _to_2d(feats, method, cfg.train.seed)
    n_classes = int(labels.max()) + 1 if labels.max() >= 0 else 0
    names = class_names(cfg, n_classes)

    fig, ax = plt.subplots(figsize=(9, 8), dpi=DPI)
    size = 24 if len(labels) <= 500 else 10 if len(labels) <= 3000 else 4
    if 0 < n_classes <= 20:
        cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
        for c in range(n_classes):
            sel = labels == c
            ax.scatter(coords[sel, 0], coords[sel, 1], s=size, color=cmap(c), alpha=0.8,
                       linewidths=0, label=names[c])
        ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  fontsize=10, markerscale=max(1.0, 30 / size) ** 0.5)
    else:
        sc = ax.scatter(coords[:, 0], coords[:, 1], s=size, c=labels, cmap="turbo", alpha=0.8,
                        linewidths=0)
        fig.colorbar(sc, ax=ax, label="class")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{name} 1", fontsize=11)
    ax.set_ylabel(f"{name} 2", fontsize=11)
    ax.set_title(f"{run_dir.name}: {name} of {len(labels)} {cfg.data.name} test features "
                 f"(epoch {enc.meta.get('epoch')})", fontsize=12)
    fig.subplots_adjust(left=0.05, right=0.8, top=0.93, bottom=0.05)
    return save_figure(fig, out if out is not None else RunDir(run_dir).plots / EMBED_PNG)


def nearest(bank: Tensor, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Cosine similarities and indices of the ``k`` nearest bank rows of each query.

    Args:
        bank: M x D features.
        queries: Q x D features.

    Returns:
        (Q x k similarities, Q x k int64 indices into ``bank``), most similar first.
    """
    sims = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T  # Q x M
    return sims.topk(min(k, len(bank)), dim=1)


def _cell(ax, image: Tensor, title: str, color: Any, title_color: Any = "black") -> None:
    arr = image.permute(1, 2, 0).numpy()  # H x W x C uint8
    if arr.shape[2] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize=9, color=title_color, pad=4)


def neighbors_grid(run_dir: str | Path, out: str | Path | None = None,
                   overrides: list[str] | None = None, queries: int = 8, k: int = 8,
                   log=print) -> Path:
    """Write a grid: each row a test image (first column) and its ``k`` nearest train images
    by cosine similarity of encoder features.

    Neighbours with the query's class have a green border, others red; each cell is titled
    with its class (and, for neighbours, the similarity). The bank is the labeled train
    split, or with ``data.subset = N`` (and ``eval.subset`` unset) its first N images. Images
    are drawn pixel-exact (nearest) at about 1.2 inch a cell, so 28 px images are upscaled
    about 4x.

    Args:
        run_dir: a run dir with ``encoder.safetensors``.
        out: PNG to write; default ``run_dir/plots/neighbors.png``.
        overrides: ``section.key=value`` strings applied to the run's config
            (``eval.subset=N`` caps the train bank).
        queries: rows, test images taken round-robin over the classes.
        k: neighbours per query.

    Returns:
        The PNG path.
    """
    if queries < 1 or k < 1:
        raise SimCLRError("--queries and --k must be at least 1")
    run_dir = Path(run_dir)
    cfg, enc, data, device, precision = _encoder_and_data(run_dir, overrides, bank=True)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    bank = _features(enc, "train", xtr, ytr, cfg, device, precision, RunDir(run_dir).features)
    q_idx = pick_stratified(yte, queries)
    q_feats = _features(enc, "test", xte[q_idx], yte[q_idx], cfg, device, precision, None)
    sims, nn_idx = nearest(bank, q_feats, k)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    names = class_names(cfg, max(n_classes, 0))

    def name(y: int) -> str:
        return names[y] if y >= 0 else "?"

    rows, kk = len(q_idx), nn_idx.shape[1]
    cell, gap, spacer, band, margin = 1.2, 0.1, 0.35, 0.3, 0.15  # inches
    width = 2 * margin + (kk + 1) * cell + kk * gap + spacer
    title = textwrap.wrap(f"{run_dir.name}: {cfg.data.name} test queries (blue) and their {kk} "
                          "nearest train images by cosine similarity (in brackets)",
                          int(width * 12.5))
    title += textwrap.wrap("green border: same class as the query, red: another class",
                           int(width * 12.5))
    head = 0.2 * len(title) + 0.15
    height = head + rows * (cell + band) + margin
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    fig.text(0.5, 1 - 0.1 / height, "\n".join(title), ha="center", va="top", fontsize=10)

    def axes(row: int, col: int):
        x = margin + col * (cell + gap) + (spacer if col else 0.0)
        y = height - head - row * (cell + band) - band - cell
        return fig.add_axes((x / width, y / height, cell / width, cell / height))

    for r, qi in enumerate(q_idx.tolist()):
        qy = int(yte[qi])
        _cell(axes(r, 0), xte[qi], f"query: {name(qy)}", "#1f4fbf", "#1f4fbf")
        for j in range(kk):
            bi = int(nn_idx[r, j])
            y = int(ytr[bi])
            same = y == qy and y >= 0
            color = "0.5" if qy < 0 or y < 0 else "#1a9641" if same else "#d7191c"
            _cell(axes(r, j + 1), xtr[bi], f"{name(y)} ({sims[r, j]:.2f})", color,
                  "black" if same or qy < 0 else "#d7191c")
    return save_figure(fig, out if out is not None else RunDir(run_dir).plots / NEIGHBORS_PNG)


PREVIEW_PAD = 2  # white border (px) between preview cells, before upscaling
PREVIEW_LINE = 18  # px per header line of a preview: its title, then the column labels


def preview_labels(n_views: int) -> list[str]:
    """The column labels of an augmentation preview."""
    return ["original"] + [f"view {i}" for i in range(1, n_views + 1)]


def _fit(draw, text: str, font, width: float) -> str:
    """``text``, its last words cut (with an ellipsis) until it is at most ``width`` px."""
    words = text.split()
    while len(words) > 1 and draw.textlength(text, font=font) > width:
        words = words[:-1]
        text = " ".join(words) + " ..."
    return text


def augment_preview(images_uint8: Tensor, cfg: C.Augment, mean, std, path: str | Path,
                    n_views: int = 4, seed: int = 0, title: str | None = None) -> Path:
    """Write a PNG: a title line, the column labels (``original``, ``view 1``, ...), then one
    row per image: the original and ``n_views`` SimCLR views of it.

    Cells are separated by a white border and upscaled (nearest) so each is >= 96 px; the
    header is ``2 * PREVIEW_LINE`` px high.

    Args:
        images_uint8: N x C x H x W uint8, any device (the work runs on CPU).
        cfg: the augmentation settings; the default title names them.
        path: PNG file to write (parent folders are made).
        seed: seed of the CPU generator, so a preview is reproducible.
        title: the title line; default the settings of the views and the seed.

    Returns:
        The path written.
    """
    from PIL import Image, ImageDraw, ImageFont

    from simclr.augment.ops import blur_probability, denormalize, simclr_augment, to_float

    x, pad = images_uint8.detach().cpu(), PREVIEW_PAD
    N, C, H, W = x.shape
    views = simclr_augment(x.repeat(n_views, 1, 1, 1), cfg, mean, std,
                           torch.Generator().manual_seed(seed))
    views = denormalize(views, mean, std).clamp(0, 1).view(n_views, N, C, H, W)
    cells = torch.cat([to_float(x)[None], views]).transpose(0, 1)  # N x 1+V x C x H x W
    cells = F.pad(cells, (pad, 0, pad, 0), value=1.0)  # white left/top border per cell
    grid = cells.permute(2, 0, 3, 1, 4).reshape(C, N * (H + pad), (1 + n_views) * (W + pad))
    grid = F.pad(grid, (0, pad, 0, pad), value=1.0)  # close the right/bottom edges
    arr = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if C == 1 else np.ascontiguousarray(arr))
    scale = -(-96 // max(H, W))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)

    page = Image.new(img.mode, (img.width, img.height + 2 * PREVIEW_LINE), "white")
    page.paste(img, (0, 2 * PREVIEW_LINE))
    draw, font = ImageDraw.Draw(page), ImageFont.load_default(size=12)
    if title is None:
        title = (f"SimCLR views (seed {seed}): crop area {cfg.crop_scale[0]:g}-"
                 f"{cfg.crop_scale[1]:g}, flip {cfg.flip_p:g}, jitter {cfg.jitter_strength:g} "
                 f"(p {cfg.jitter_p:g}), gray {cfg.gray_p:g}, blur {blur_probability(cfg, H):g}")
    draw.text((pad * scale, 3), _fit(draw, title, font, page.width - 2 * pad * scale),
              fill="black", font=font)
    for col, label in enumerate(preview_labels(n_views)):
        center = scale * (pad + col * (W + pad) + W / 2)
        draw.text((center - draw.textlength(label, font=font) / 2, PREVIEW_LINE + 3), label,
                  fill="black", font=font)
    return atomic_write(path, lambda tmp: page.save(tmp, format="PNG"))


def save_figure(fig, out: str | Path, dpi: int = DPI) -> Path:
    """Write a matplotlib figure as a PNG (atomically) and close it."""
    try:
        return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)


__all__ = ["augment_preview", "class_names", "embed_map", "nearest", "neighbors_grid",
           "pick_stratified", "preview_labels", "run_config", "save_figure"]
