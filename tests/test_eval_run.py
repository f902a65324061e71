"""`simclr eval` and the Python API around it: eval.json, baselines, load_encoder, the feature
cache, the online monitor, the 80/20 protocol and fine-tuning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import simclr
import simclr.eval_run as eval_run
from simclr.config import build_config
from simclr.errors import SimCLRError
from simclr.train import pretrain
from tests.formats import write_image_folder

REPO = Path(__file__).parent.parent


def test_cli_eval_writes_schema_with_baselines(run_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "simclr", "eval", str(run_dir),
                           "--eval.kmeans_init=2"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "linear top1" in proc.stdout and "raw_pixels" in proc.stdout
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["dataset"] == "mnist" and report["epoch"] == 2 and report["feature_dim"] == 32
    got = {(r["model"], r["protocol"]) for r in report["results"]}
    assert got == {(m, p) for m in ("simclr", "random_init", "raw_pixels")
                   for p in ("linear", "knn", "kmeans")}
    for r in report["results"]:
        assert r["split"] == "test" and r["n_train"] == 128 and r["n_test"] == 48
        assert "settings" in r and "epoch" in r
        for key in ("top1", "top5", "nmi", "accuracy"):
            if r.get(key) is not None:
                assert 0.0 <= r[key] <= 1.0
        if r["protocol"] == "kmeans":
            assert -1.0 <= r["ari"] <= 1.0
    linear = next(r for r in report["results"] if r["protocol"] == "linear")
    assert linear["settings"]["chosen_on"].endswith("of train")
    assert linear["n_val"] > 0
    pixels = next(r for r in report["results"] if r["model"] == "raw_pixels")
    assert pixels["feature_dim"] == 28 * 28


def test_online_monitor_equals_offline_knn(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    online = [x for x in lines if x["kind"] == "knn"]
    assert [x["epoch"] for x in online] == [1, 2]
    report = simclr.evaluate(run_dir, ["knn"], ["eval.baselines=false"], write=False,
                             log=lambda *_: None)
    assert report["results"][0]["top1"] == online[-1]["knn_top1"]


def test_load_encoder_applies_normalization(run_dir):
    enc = simclr.load_encoder(run_dir)
    assert not enc.training and enc.feature_dim == 32
    x = torch.rand(5, 1, 28, 28)
    mean, std = enc.meta["mean"][0], enc.meta["std"][0]
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.encoder((x - mean) / std))
    assert simclr.load_encoder(run_dir / "encoder.safetensors").meta == enc.meta


def test_features_are_cached_per_encoder(run_dir, monkeypatch):
    simclr.evaluate(run_dir, ["knn"], ["eval.baselines=false"], write=False, log=lambda *_: None)
    calls = []
    real = eval_run.extract_features
    monkeypatch.setattr(eval_run, "extract_features",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    simclr.evaluate(run_dir, ["knn", "kmeans"], ["eval.baselines=false"], write=False,
                    log=lambda *_: None)
    assert calls == []


def test_finetune_is_named_finetune(run_dir):
    report = simclr.evaluate(run_dir, ["finetune"], ["eval.baselines=false", "finetune.epochs=1",
                                                     "finetune.labels=0.5"], write=False,
                             log=lambda *_: None)
    (row,) = report["results"]
    assert row["protocol"] == "finetune" and row["settings"]["trains_encoder"] is True
    assert abs(row["n_train"] - 64) <= 10 and 0.0 <= row["top1"] <= 1.0  # half of each class


def test_eighty_twenty_protocol_on_a_folder_without_test_split(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=2, n_per_class=20, size=16)
    cfg = build_config(overrides={
        "data.name": "folder", "data.root": str(tmp_path / "imgs"), "data.image_size": 16,
        "model.width": 0.0625, "model.proj_dim": 8, "train.batch_size": 8, "train.epochs": 1,
        "train.progress": False, "eval.every": 0})
    run_dir = pretrain(cfg, tmp_path / "run", log=lambda *_: None)
    with pytest.raises(SimCLRError, match="--probe.split=0.8"):
        simclr.evaluate(run_dir, ["knn"], ["eval.baselines=false"], log=lambda *_: None)
    report = simclr.evaluate(run_dir, ["linear", "knn"], ["probe.split=0.8", "eval.knn_k=5"],
                             log=lambda *_: None)
    assert {r["n_train"] for r in report["results"]} == {32}
    assert {r["n_test"] for r in report["results"]} == {8}


def test_unknown_protocol_and_missing_run(tmp_path, run_dir):
    with pytest.raises(SimCLRError, match="unknown protocol 'linaer'"):
        simclr.evaluate(run_dir, ["linaer"])
    with pytest.raises(SimCLRError, match="not a simclr run dir|config.yaml not found"):
        simclr.evaluate(tmp_path, ["knn"])
