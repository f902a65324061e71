"""`simclr plot / embed / neighbors / report`: metrics reading, run stats against our own
computation from metrics.jsonl, PNGs that open, have the expected size and are not blank."""

import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import simclr
from simclr.data.datasets import load_split
from simclr.errors import SimCLRError
from simclr.evaluation.results import format_table
from simclr.tools import pictures, report
from tests.helpers import cli as simclr_cli

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).parent.parent


def assert_picture(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """The PNG opens, has ``size`` (width, height) and is not a blank page."""
    with Image.open(path) as img:
        img.load()
        if size is not None:
            assert img.size == size
        arr = np.asarray(img.convert("RGB"))
    assert arr.astype(float).var() > 200, f"{path} looks blank"
    return arr


def own_stats(run_dir: Path) -> dict:
    """The summary numbers, computed here independently of simclr.tools.report."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [x["loss"] for x in lines if x["kind"] == "epoch"]
    speeds = [x["images_per_s"] for x in lines if x["kind"] == "window"]
    knn = [x["knn_top1"] for x in lines if x["kind"] == "knn"]
    return {"first_loss": epochs[0], "last_loss": epochs[-1], "lowest_loss": min(epochs),
            "epochs": len(epochs), "steps": max(x["step"] for x in lines),
            "time": max(x["time"] for x in lines), "images_per_s": float(np.mean(speeds)),
            "knn_top1": knn[-1]}


def test_read_metrics_skips_a_line_cut_by_a_crash(run_dir, tmp_path):
    full = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (tmp_path / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text()
                                            + '{"kind": "window", "epoch": 3, "lo')
    assert report.read_metrics(tmp_path) == full
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], "{broken", *lines[1:]]) + "\n")
    with pytest.raises(SimCLRError, match="line 2 is not JSON"):
        report.read_metrics(tmp_path)
    with pytest.raises(SimCLRError, match="cannot read"):
        report.read_metrics(tmp_path / "missing")


def test_run_stats_equal_our_computation(run_dir):
    stats = report.run_stats(run_dir)
    expected = own_stats(run_dir)
    assert stats["images_per_s"] == pytest.approx(expected.pop("images_per_s"), rel=1e-12)
    assert {k: v for k, v in stats.items() if k != "images_per_s"} == expected
    assert stats["epochs"] == 2 and stats["steps"] == 8


def test_cli_plot_prints_the_stats_and_writes_the_figure(run_copy):
    run_dir = run_copy
    proc = simclr_cli("plot", run_dir)
    assert proc.returncode == 0, proc.stderr
    s = own_stats(run_dir)
    line = next(x for x in proc.stdout.splitlines() if x.startswith(f"{run_dir}:"))
    for text in (f"first {s['first_loss']:.4f}", f"last {s['last_loss']:.4f}",
                 f"lowest {s['lowest_loss']:.4f}", f"epochs {s['epochs']}",
                 f"time {s['time']:.1f}s", f"{s['images_per_s']:.1f} images/s",
                 f"kNN top1 {100 * s['knn_top1']:.2f}%"):
        assert text in line, (text, line)
    assert_picture(run_dir / "plots" / "loss.png", (1500, 500))


def test_plot_overlays_runs_labelled_by_their_config_differences(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("plots", "*.pt"))
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["optim"]["name"], cfg["train"]["progress"] = "sgd", True  # progress: not in legends
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert report.legend_labels([run_dir, other]) == ["optim.name=lars", "optim.name=sgd"]
    same = tmp_path / "same"
    shutil.copytree(run_dir, same, ignore=shutil.ignore_patterns("plots", "*.pt"))
    assert report.legend_labels([run_dir, same]) == [run_dir.name, "same"]
    out = report.plot_runs([run_dir, other], tmp_path / "two.png")
    assert_picture(out, (1500, 500))


def test_embed_map_of_test_features(run_dir, tmp_path, monkeypatch):
    from sklearn.manifold import trustworthiness

    figures = []
    save = pictures.save_figure
    monkeypatch.setattr(pictures, "save_figure",
                        lambda fig, out: figures.append(fig) or save(fig, out))
    out = pictures.embed_map(run_dir, tmp_path / "embed.png", points=40, log=lambda *_: None)
    arr = assert_picture(out, (900, 800))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 10  # class colours, not one ink
    # what is drawn: one scatter per class, named by the legend, holding the chosen test
    # images of that class at 2-D points whose neighbourhoods are those of their features
    (ax,) = [a for a in figures[0].axes if a.collections]
    root = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"]
    images, labels = load_split("mnist", "test", root, download=False)
    idx = pictures.pick_stratified(labels, 40)
    classes = sorted(set(labels[idx].tolist()))
    assert [c.get_label() for c in ax.collections] == [pictures.CLASS_NAMES["mnist"][c]
                                                        for c in classes]
    with torch.no_grad():
        feats = simclr.load_encoder(run_dir)(images[idx].float() / 255)
    high = torch.cat([feats[labels[idx] == c] for c in classes]).numpy()
    low = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(low) == 40 and len({tuple(c.get_facecolor()[0][:3]) for c in ax.collections}) == \
        len(classes)
    trust = trustworthiness(high, low, n_neighbors=5, metric="cosine")
    shuffled = trustworthiness(high, low[np.random.default_rng(0).permutation(40)],
                               n_neighbors=5, metric="cosine")
    assert trust > 0.75 and shuffled < 0.65, (trust, shuffled)  # neighbours kept, or chance


def test_pick_stratified_takes_classes_in_turn():
    labels = torch.tensor([2, 0, 0, 1, 2, 2, 1, 0])
    assert pictures.pick_stratified(labels, 5).tolist() == [1, 3, 0, 2, 6]
    assert sorted(pictures.pick_stratified(labels, 99).tolist()) == list(range(8))


def test_nearest_is_brute_force_cosine():
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(30, 5, generator=gen), torch.randn(4, 5, generator=gen)
    sims, idx = pictures.nearest(bank, queries, k=3)
    for q in range(4):
        cos = [float(torch.dot(queries[q], b) / (queries[q].norm() * b.norm())) for b in bank]
        order = sorted(range(30), key=lambda i: -cos[i])[:3]
        assert idx[q].tolist() == order
        assert sims[q].tolist() == pytest.approx([cos[i] for i in order], abs=1e-5)


def test_cli_neighbors_grid(run_copy, tmp_path, monkeypatch):
    run_dir = run_copy
    out = tmp_path / "nn.png"
    searches = []
    real = pictures.nearest
    monkeypatch.setattr(pictures, "nearest", lambda bank, queries, k: searches.append(
        (bank, queries, real(bank, queries, k))) or searches[-1][2])
    proc = simclr_cli("neighbors", run_dir, "--out", out, "--queries", 3, "--k", 4,
                      "--train.precision=fp32")
    assert proc.returncode == 0, proc.stderr
    # the neighbours drawn: the 4 most cosine-similar of all 128 train images to each of the
    # 3 test queries (one per class in turn), by the run's encoder
    ((bank, queries, (_, idx)),) = searches
    root = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"]
    (x, _), (xt, yt) = (load_split("mnist", s, root, download=False) for s in ("train", "test"))
    enc = simclr.load_encoder(run_dir)
    f = simclr.extract_features(enc.encoder, x, enc.meta["mean"], enc.meta["std"])
    q = simclr.extract_features(enc.encoder, xt[pictures.pick_stratified(yt, 3)],
                                enc.meta["mean"], enc.meta["std"])
    torch.testing.assert_close(bank, f, rtol=1e-4, atol=1e-5)  # (weights' memory layout)
    torch.testing.assert_close(queries, q, rtol=1e-4, atol=1e-5)
    cos = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(f, dim=1).T
    assert idx.tolist() == [sorted(range(128), key=lambda i: -float(c[i]))[:4] for c in cos]
    # 5 cells of 1.2 in + 4 gaps of 0.1 + 0.35 spacer + 0.3 margins = 7.05 in wide;
    # 3 rows of 1.5 in + 0.15 margin + a 3-line title of 0.75 in = 5.4 in high; 100 dpi
    arr = assert_picture(out, (705, 540))
    blue = np.all(np.abs(arr.astype(int) - [0x1F, 0x4F, 0xBF]) < 8, axis=-1)
    assert blue.sum() > 3 * 4 * 100  # a query border on every row


def test_cells_show_colour_and_gray_images_as_they_are(tmp_path):
    red = torch.zeros(3, 28, 28, dtype=torch.uint8)
    red[0] = 255
    ramp = torch.arange(28, dtype=torch.uint8).mul(9).expand(1, 28, 28)
    fig, (a, b) = plt.subplots(1, 2, figsize=(4, 2), dpi=100)
    pictures._cell(a, red, "red", "green")
    pictures._cell(b, ramp, "ramp", "green")
    fig.savefig(tmp_path / "cells.png")
    plt.close(fig)
    arr = np.asarray(Image.open(tmp_path / "cells.png").convert("RGB")).astype(int)
    centre_a, centre_b = arr[100, 100], arr[100, 300]
    assert centre_a[0] > 200 and centre_a[1] < 50 and centre_a[2] < 50
    assert centre_b[0] == centre_b[1] == centre_b[2]


def test_report_without_then_with_eval(run_copy):
    run_dir = run_copy
    out = report.write_report(run_dir, log=lambda *_: None)
    text = out.read_text()
    assert "No `eval.json` yet: run `simclr eval" in text
    assert "```yaml" in text and "name: mnist" in text
    links = [x.split("](")[1].rstrip(")") for x in text.splitlines() if x.startswith("![")]
    assert links == ["plots/loss.png", "plots/embed.png", "plots/neighbors.png"]
    for link in links:
        assert_picture(run_dir / link)
    s = own_stats(run_dir)
    assert f"| {s['first_loss']:.4f} | {s['last_loss']:.4f} | {s['lowest_loss']:.4f} | 2 |" in text

    ev = simclr.evaluate(run_dir, ["knn", "kmeans"], ["eval.kmeans_init=2"], log=lambda *_: None)
    proc = simclr_cli("report", run_dir)
    assert proc.returncode == 0, proc.stderr
    text = (run_dir / "report.md").read_text()
    assert format_table(ev) in text and "raw_pixels" in text and "No `eval.json`" not in text


def test_picture_errors_are_one_line(tmp_path, run_dir):
    proc = simclr_cli("embed", tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("simclr: error: ")
    assert "config.yaml not found" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(SimCLRError, match="--points"):
        pictures.embed_map(run_dir, tmp_path / "x.png", points=1)


def test_neighbors_bank_follows_the_training_subset(tmp_path, monkeypatch):
    from simclr.config import build_config
    from simclr.train.pretrain import pretrain
    from tests.formats import write_idx

    write_idx(tmp_path / "data", 64, n_test=16)
    cfg = build_config(overrides={
        "data.name": "mnist", "data.root": str(tmp_path / "data"), "data.download": False,
        "data.subset": 24, "model.width": 0.0625, "model.proj_dim": 16,
        "train.batch_size": 8, "train.epochs": 1, "train.progress": False,
        "optim.warmup_epochs": 0.0, "eval.every": 0})
    run_dir = pretrain(cfg, tmp_path / "run", log=lambda *_: None)
    banks, real = [], pictures.nearest
    monkeypatch.setattr(pictures, "nearest",
                        lambda bank, q, k: banks.append(len(bank)) or real(bank, q, k))
    pictures.neighbors_grid(run_dir, tmp_path / "a.png", queries=2, k=3)
    pictures.neighbors_grid(run_dir, tmp_path / "b.png", ["eval.subset=40"], queries=2, k=3)
    assert banks == [24, 40]


@pytest.mark.parametrize("c", [1, 3])
def test_augment_preview_png_has_a_title_and_column_labels(tmp_path, c):
    from simclr.config import Augment

    n, side, views = 3, 32, 4
    mean, std = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)) if c == 3 else ((0.3,), (0.3,))
    x = torch.randint(0, 256, (n, c, side, side), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)
    path = pictures.augment_preview(x, Augment(), mean, std, tmp_path / "sub" / "p.png",
                                    n_views=views, seed=1)
    scale, pad, line = -(-96 // side), pictures.PREVIEW_PAD, pictures.PREVIEW_LINE
    cell = (side + pad) * scale
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L"), dtype=np.float64)
        assert img.format == "PNG"
        assert img.size == (((1 + views) * (side + pad) + pad) * scale,
                            (n * (side + pad) + pad) * scale + 2 * line)
    assert arr[2 * line:].var() > 100  # the grid
    assert (arr[:line] < 128).sum() > 200  # a title line of text
    labels = arr[line:2 * line]
    for col in range(1 + views):  # a label over every column, inside the column
        inside = labels[:, col * cell + pad * scale:(col + 1) * cell]
        assert (inside < 128).sum() > 20, col
        assert (labels[:, col * cell:col * cell + pad * scale] < 128).sum() == 0
    assert pictures.preview_labels(views) == ["original", "view 1", "view 2", "view 3",
                                              "view 4"]
    again = tmp_path / "again.png"
    pictures.augment_preview(x, Augment(), mean, std, again, n_views=views, seed=1)
    assert again.read_bytes() == path.read_bytes()
