"""A run dir written before the package was laid out in layers still evaluates to the same
numbers, exports and resumes exactly.

``tests/data/legacy_run`` was written by commit 0eed5d9 (the flat ``simclr/`` of 38 modules), from
the repository root, with ``tests/data/legacy_mnist`` (96 train / 32 test images of the learnable
"levels" task, :func:`tests.formats.write_levels_idx`'s kind) as its data::

    python -m simclr pretrain --run-dir tests/data/legacy_run --data.name=mnist \\
        --data.root=tests/data/legacy_mnist --data.download=false --model.width=0.0625 \\
        --model.proj_dim=16 --train.batch_size=32 --train.epochs=2 --train.max_steps=4 \\
        --train.log_every=1 --train.progress=false --train.precision=fp32 --eval.every=1 \\
        --eval.knn_k=10
    python -m simclr eval tests/data/legacy_run --protocol linear,knn --eval.baselines=false

It stopped at step 4 of 6 (``train.max_steps``); its ``eval.json`` holds that commit's numbers.
The tests work on copies: the committed files never change.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import simclr
from simclr.tools.export import from_torchvision, to_torchvision
from simclr.train.rundir import read_encoder
from tests.helpers import cli, one_line_error

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "data" / "legacy_run"
ARGS = ["--data.name=mnist", "--data.root=tests/data/legacy_mnist", "--data.download=false",
        "--model.width=0.0625", "--model.proj_dim=16", "--train.batch_size=32",
        "--train.epochs=2", "--train.log_every=1", "--train.progress=false",
        "--train.precision=fp32", "--eval.every=1", "--eval.knn_k=10"]


@pytest.fixture
def legacy(tmp_path) -> Path:
    return Path(shutil.copytree(LEGACY, tmp_path / "legacy_run"))


def test_it_evaluates_to_the_numbers_it_had(legacy):
    then = json.loads((LEGACY / "eval.json").read_text())["results"]
    proc = cli("eval", legacy, "--protocol", "linear,knn", "--eval.baselines=false", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    now = json.loads((legacy / "eval.json").read_text())["results"]
    assert len(now) == len(then) == 2  # the same keys: each result replaced its old self
    for old, new in zip(then, now, strict=True):
        assert (new["protocol"], new["model_sha256"], new["inputs"]) == \
            (old["protocol"], old["model_sha256"], old["inputs"])
        assert new["top1"] == old["top1"], new["protocol"]
    enc = simclr.load_encoder(legacy)
    assert enc.feature_dim == 32 and enc.meta["step"] == 4


def test_it_exports(legacy, tmp_path):
    tensors, meta = read_encoder(legacy / "encoder.safetensors")
    mapped = to_torchvision(tensors)  # torchvision's names for every tensor, and back
    assert "conv1.weight" in mapped and "layer4.1.bn2.running_var" in mapped
    back = from_torchvision(mapped)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in back)
    # a narrow ResNet has no torchvision model to load into: refused in one line, as then
    one_line_error(cli("export", legacy, "--out", tmp_path / "tv.pt"), "no width multiplier")
    assert meta["width"] == 0.0625 and not (tmp_path / "tv.pt").exists()


def test_it_resumes_where_it_stopped_and_ends_as_an_uninterrupted_run(legacy, tmp_path):
    proc = cli("pretrain", "--run-dir", legacy, *ARGS, "--train.max_steps=0", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "resuming at step 4" in proc.stdout
    straight = tmp_path / "straight"
    assert cli("pretrain", "--run-dir", straight, *ARGS, cwd=REPO).returncode == 0
    a, b = (load_file(str(d / "encoder.safetensors")) for d in (straight, legacy))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (legacy / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6
