"""`simclr sweep`: every grid cell trained, evaluated and tabulated; a rerun skips finished
cells; a bad grid fails before any run dir exists."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclr.errors import SimCLRError
from simclr.tools import sweep as S
from simclr.tools.report import run_stats
from tests.formats import write_idx
from tests.helpers import cli

REPO = Path(__file__).parent.parent
GRID = ["--grid", "optim.name=lars,adam", "--grid", "train.batch_size=32,64"]
CELLS = ["optim.name=lars,train.batch_size=32", "optim.name=lars,train.batch_size=64",
         "optim.name=adam,train.batch_size=32", "optim.name=adam,train.batch_size=64"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Overrides for 1-epoch tiny runs on a 128-image MNIST-format dataset."""
    root = tmp_path_factory.mktemp("data")
    write_idx(root, 128, n_test=48)
    return ["--data.name=mnist", f"--data.root={root}", "--data.download=false",
            "--model.width=0.0625", "--model.proj_dim=16", "--train.epochs=1",
            "--train.progress=false", "--eval.every=0", "--eval.baselines=false",
            "--eval.kmeans_init=2", "--eval.knn_k=20"]


def simclr_row(eval_json: dict, protocol: str, key: str) -> float:
    (value,) = [r[key] for r in eval_json["results"]
                if r["model"] == "simclr" and r["protocol"] == protocol]
    return value


def test_sweep_tabulates_every_cell_and_resumes(tiny, tmp_path):
    out = tmp_path / "sweep"
    proc = cli("sweep", *GRID, "--out", out, *tiny)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(CELLS)

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == CELLS
    md = (out / "results.md").read_text()
    for row in rows:
        cell = out / row["run"]
        ev = json.loads((cell / "eval.json").read_text())
        assert row["optim.name"] in row["run"] and f"batch_size={row['train.batch_size']}" \
            in row["run"]
        assert int(row["epochs"]) == 1 and ev["epoch"] == 1
        assert float(row["final_loss"]) == run_stats(cell)["last_loss"]
        expected = {"linear_top1": simclr_row(ev, "linear", "top1"),
                    "knn_top1": simclr_row(ev, "knn", "top1"),
                    "nmi": simclr_row(ev, "kmeans", "nmi")}
        for key, value in expected.items():
            assert float(row[key]) == value
        line = next(x for x in md.splitlines() if x.startswith(
            f"| {row['optim.name']} | {row['train.batch_size']} |"))
        for value in expected.values():
            assert f" {100 * value:.2f} |" in line
    with Image.open(out / "loss.png") as img:
        assert img.size == (1500, 500)
        assert np.asarray(img.convert("L")).astype(float).var() > 200

    mtimes = {c: (out / c / "checkpoint.pt").stat().st_mtime_ns for c in CELLS}
    (out / CELLS[1] / "eval.json").unlink()  # trained but not evaluated: evaluate only
    proc = cli("sweep", *GRID, "--out", out, *tiny)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("finished, skipped") == 3 and "training" not in proc.stdout
    assert {c: (out / c / "checkpoint.pt").stat().st_mtime_ns for c in CELLS} == mtimes
    assert (out / CELLS[1] / "eval.json").exists()
    with open(out / "results.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == CELLS


@pytest.mark.parametrize("grid,fragment", [
    ("optim.nme=lars,adam", "unknown config key 'optim.nme'"),
    ("optim.name=lars,lrs", "unknown optim.name 'lrs'"),
    ("train.batch_size=32,abc", "train.batch_size: expected int"),
    ("train.batch_size=32,4096", "larger than the dataset"),
    ("train.batch_size", "has no values"),
])
def test_bad_grid_fails_before_any_run_dir(tiny, tmp_path, grid, fragment):
    out = tmp_path / "sweep"
    proc = cli("sweep", "--grid", grid, "--out", out, *tiny)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simclr: error: ") and fragment in lines[0]
    assert not out.exists()


def test_grid_parsing_and_folder_names():
    assert S.split_values("[0.08,1],[0.2, 1]") == ["[0.08,1]", "[0.2, 1]"]
    grid = S.parse_grid(["augment.crop_scale=[0.08,1],[0.2,1]", "optim.lr=1e-3"])
    assert grid == [("augment.crop_scale", ["[0.08,1]", "[0.2,1]"]), ("optim.lr", ["1e-3"])]
    assert S.cell_name([("augment.crop_scale", "[0.2,1]"), ("data.root", "/a b/c")]) \
        == "augment.crop_scale=0.2_1,data.root=_a_b_c"
    with pytest.raises(SimCLRError, match="given twice"):
        S.parse_grid(["optim.lr=1", "optim.lr=2"])
    with pytest.raises(SimCLRError, match="empty value"):
        S.parse_grid(["optim.lr=1,,2"])
    cells = S.plan(None, grid, ["data.name=mnist"], "out")
    assert [c.cfg.augment.crop_scale for c in cells] == [(0.08, 1.0), (0.2, 1.0)]
    assert all(c.cfg.optim.lr == 1e-3 for c in cells)


def test_sweeping_optimizers_gives_each_its_own_lr_and_the_table_says_which(tmp_path):
    """README's sweep: the Fashion-MNIST preset with optim.name=lars,adam."""
    cells = S.plan(REPO / "configs/fashion_mnist_cpu.yaml", S.parse_grid(
        ["optim.name=lars,adam"]), [], tmp_path)
    assert [(c.cfg.optim.lr, c.cfg.optim.weight_decay) for c in cells] == [(1.0, 1e-4),
                                                                          (1e-3, 1e-6)]
    keys = S.table_keys(["optim.name"])
    assert keys == ["optim.name", "optim.lr", "optim.weight_decay"]
    lines = S.format_results([S.result_row(c) for c in cells], keys).splitlines()
    assert lines[0].startswith("| optim.name | optim.lr | optim.weight_decay | epochs |")
    assert lines[2].startswith("| lars | 1 | 0.0001 | 0 |")
    assert lines[3].startswith("| adam | 0.001 | 1e-06 | 0 |")
    # a grid over the lr itself is not shown twice
    assert S.table_keys(["optim.lr"]) == ["optim.lr", "optim.weight_decay"]


def test_an_lr_set_for_every_optimizer_of_a_grid_is_warned_about(tmp_path):
    import warnings

    preset = tmp_path / "lars.yaml"
    preset.write_text("optim: {name: lars, lr: 1.0}\n")
    grid = S.parse_grid(["optim.name=lars,adam"])
    with pytest.warns(UserWarning, match=r"optim.lr=1 is set for every cell of the optim.name "
                      r"grid, so every optimizer gets it; leave it unset"):
        cells = S.plan(preset, grid, [], tmp_path / "a")
    assert [c.cfg.optim.lr for c in cells] == [1.0, 1.0]  # what was asked for
    with pytest.warns(UserWarning, match="optim.weight_decay=0.1 is set"):
        S.plan(None, grid, ["optim.weight_decay=0.1"], tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unset, or itself on the grid: nothing to say
        S.plan(REPO / "configs/fashion_mnist_cpu.yaml", grid, [], tmp_path / "c")
        S.plan(preset, grid + S.parse_grid(["optim.lr=1,0.001"]), [], tmp_path / "d")
        S.plan(preset, S.parse_grid(["train.batch_size=32,64"]), [], tmp_path / "e")
