"""Run-directory files: permissions of what atomic_write makes, the metrics-log trim, and the
package on a platform without fcntl (Windows)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import simclr.train.rundir as ckpt
from simclr.models.resnet import ResNet

REPO = Path(__file__).parent.parent


def plain_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_every_written_file_has_the_plain_open_permissions(tmp_path):
    """safetensors creates its files 0600; atomic_write gives them what open() would."""
    enc = ResNet("resnet18", 0.0625, "cifar", 1)
    ckpt.export_encoder(tmp_path / ckpt.ENCODER, enc, {"arch": "resnet18"})
    ckpt.save_checkpoint(tmp_path / ckpt.CHECKPOINT, {"step": 1})
    ckpt.atomic_write(tmp_path / "eval.json", lambda tmp: tmp.write_text("{}"))
    for name in (ckpt.ENCODER, ckpt.CHECKPOINT, "eval.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain_mode(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ckpt.ENCODER, ckpt.CHECKPOINT, "eval.json"])  # no temp files left


def test_trim_metrics_keeps_the_checkpointed_lines(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s}) for s in (2, 4, 6)] + ['{"step": 8, "lo']  # cut by a crash
    log.write_text("\n".join(lines) + "\n")
    ckpt.trim_metrics(log, 4)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [2, 4]


def test_trim_metrics_is_atomic(tmp_path, monkeypatch):
    """A failure while rewriting the log leaves the old log whole (it is rewritten to a temp
    file and renamed)."""
    log = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"step": s}) + "\n" for s in (2, 4, 6))
    log.write_text(text)

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        ckpt.trim_metrics(log, 4)
    assert log.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_package_imports_without_fcntl_and_the_lock_says_it_is_off(tmp_path):
    """As on Windows: ``import fcntl`` fails; the package imports and run_lock warns."""
    script = f"""
import sys, warnings
sys.modules["fcntl"] = None  # import fcntl -> ImportError
import simclr, simclr.train.rundir as c
assert c.fcntl is None
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    with c.run_lock({str(tmp_path / 'run')!r}):
        pass
print(str(w[0].message))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "is not locked: this platform has no fcntl.flock" in proc.stdout
    assert "run one at a time" in proc.stdout



def test_a_saved_config_without_newer_keys_resumes_unforced():
    """A run saved before a key existed resumes: the missing key counts as its default, so
    only real changes (and never eval/probe/finetune or the free train keys) are listed."""
    from simclr.config import build_config
    from simclr.train.rundir import resume_changes

    planned = build_config().to_dict()
    old = {s: dict(v) for s, v in planned.items()}
    del old["loss"]["scale"], old["model"]["shortcut"], old["augment"]["views"]
    assert resume_changes(old, planned) == []
    changed = build_config(overrides={"loss.scale": 2.0, "train.max_steps": 5,
                                      "eval.knn_k": 5}).to_dict()
    assert resume_changes(old, changed) == ["loss.scale"]
