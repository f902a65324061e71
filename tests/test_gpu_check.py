"""benchmarks/gpu_check.sh and its driver benchmarks/gpu_check.py, on a CPU: the one-line exit
without a GPU, the CIFAR-format writer, every step at toy sizes (the same code the GPU runs),
the table and the goals."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check as G
from simclr.data.datasets import load_split
from tests.helpers import cli

REPO = Path(__file__).parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_script_without_a_gpu_exits_at_once_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = "/usr/bin:/bin"  # no nvidia-smi there on this machine
    env["PYTHON"] = sys.executable  # where there is one: torch says no GPU
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU found"), lines
    assert not (REPO / "benchmarks" / "gpu").exists() or not any(
        (REPO / "benchmarks" / "gpu").glob("cpu-*.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_driver_without_a_gpu_says_so_in_one_line(capsys, tmp_path):
    assert G.gpu_missing().startswith("no CUDA GPU found")
    assert G.main(["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: no CUDA GPU found")
    assert not list(tmp_path.iterdir())


def test_cifar_writer_is_read_as_cifar10(tmp_path):
    G.write_cifar10_binary(tmp_path, 103, 17, seed=1)
    x, y = load_split("cifar10", "train", tmp_path, download=False)
    assert x.shape == (103, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (103,)
    assert int(y.min()) >= 0 and int(y.max()) <= 9 and len(set(y.tolist())) > 5
    x_test, _ = load_split("cifar10", "test", tmp_path, download=False)
    assert x_test.shape == (17, 3, 32, 32)
    assert 100 < x.float().mean() < 155  # random pixels, not zeros
    record = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()[:3073]
    assert torch.equal(x[0].flatten(), torch.tensor(list(record[1:]), dtype=torch.uint8))
    assert y[0] == record[0]


def test_file_name():
    assert G.file_name("NVIDIA H200") == "NVIDIA-H200.json"
    assert G.file_name("NVIDIA A100-SXM4-80GB") == "NVIDIA-A100-SXM4-80GB.json"
    assert G.file_name("Tesla V100 (PCIe) / 16GB") == "Tesla-V100-PCIe-16GB.json"


def gpu_like_results():
    return {
        "tests": {"ok": True, "passed": 14, "skipped": 0, "seconds": 97.0},
        "bench_eager": {"ok": True, "bare_img_s": 30000.0, "full_img_s": 28500.0,
                        "ratio": 0.95, "bare_gflop_s": 51000.0, "peak_mem_mb": 9000.0},
        "bench_compile": {"ok": True, "bare_img_s": 36000.0, "full_img_s": 31000.0,
                          "ratio": 0.861, "bare_gflop_s": 61000.0, "peak_mem_mb": 8000.0},
        "epoch": {"ok": True, "epoch1_s": 6.5, "epoch2_s": 2.4, "images_per_s": 20693.0,
                  "wall_2_epochs_s": 21.0},
        "torchrun": {"ok": False, "rc": 1, "tail": "Traceback ...\nRuntimeError: boom\n"},
        "kill_resume": {"ok": True, "killed_at_step": 28, "resumed_from_step": 25,
                        "final_step": 60, "encoder_exact": False, "encoder_rel_diff": 3.2e-5},
        "bench_graphs": {"ok": False, "skipped": "time budget (80 s left)"},
    }


def test_table_shows_the_goals_and_the_fastest_mode():
    env = {"gpu": "NVIDIA H200", "capability": "9.0", "gpu_memory_gib": 139.8,
           "driver": "580.1", "torch": "2.11.0", "cuda": "13.0", "cudnn": 91000,
           "commit": "abc1234"}
    results = gpu_like_results()
    assert G.fastest(results) == "compile"  # highest full-step img/s, failed rows left out
    text = G.table(env, G.Sizes(), results)
    rows = {line.split("  ")[0].strip(): line for line in text.splitlines()[1:]}
    assert "NVIDIA H200 (sm 9.0" in text.splitlines()[0]
    assert "full/bare 0.950 (goal >= 0.9: met)" in rows["bench eager"]
    assert "full/bare 0.861 (goal >= 0.9: NOT met)" in rows["bench compile"]
    assert "epoch 2: 2.40 s" in rows["CIFAR epoch"] and "NOT met" in rows["CIFAR epoch"]
    assert "FAIL" in rows["torchrun nproc=1"] and "RuntimeError: boom" in rows["torchrun nproc=1"]
    assert "rel diff 3.2e-05" in rows["kill -9 + resume"]
    assert "skipped: time budget" in rows["bench CUDA graphs"]
    assert rows["fastest step"].endswith("compile")


def test_bench_graphs_compiles_with_cuda_graphs(monkeypatch, tmp_path):
    import simclr.tools.bench

    seen = {}

    def fake(cfg, steps, warmup, windows, compile_mode=None):
        seen.update(compile=cfg.train.compile, mode=compile_mode, batch=cfg.train.batch_size,
                    steps=(steps, warmup, windows))
        return {"precision": "bf16", "layout": "channels_last", "compile": True,
                "bare_img_s": 2.0, "full_img_s": 1.0, "ratio": 0.5, "bare_gflop_s": 1.0,
                "peak_mem_mb": 1.0}

    monkeypatch.setattr(simclr.tools.bench, "bench_one", fake)
    out = tmp_path / "g.json"
    G.bench_graphs(["--train.batch_size=512", "--steps=20", "--windows=3", "--warmup=5",
                    "--json", str(out)])
    assert seen == {"compile": True, "mode": "reduce-overhead", "batch": 512,
                    "steps": (20, 5, 3)}
    assert json.loads(out.read_text())["rows"][0]["ratio"] == 0.5


def in_process(real_run):
    """``G.run`` with ``python -m simclr ...`` commands run in this process (the same argv
    through :func:`simclr.cli.main`); others (torchrun) and the step that SIGKILLs its run
    still start real processes."""
    def run(cmd, timeout, cwd=None):
        if cmd[:3] != G.simclr_cmd():
            return real_run(cmd, timeout, cwd)
        start = time.perf_counter()
        r = cli(*cmd[3:], cwd=cwd)
        out = r.stdout + r.stderr
        return {"ok": r.returncode == 0, "rc": r.returncode,
                "seconds": round(time.perf_counter() - start, 2), "head": out[:600],
                "tail": out[-2000:]}
    return run


def test_every_step_at_toy_sizes_on_cpu(tmp_path, capsys, monkeypatch):
    """The GPU run's steps, unchanged, at TINY sizes: bench, two epochs, torchrun, kill -9 +
    resume (bit-exact on a CPU)."""
    monkeypatch.setattr(G, "run", in_process(G.run))
    code = G.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "out"),
                   "--work", str(tmp_path)])
    out = capsys.readouterr().out
    (path,) = (tmp_path / "out").glob("*.json")
    report = json.loads(path.read_text())
    results = report["results"]
    assert code == 0, {k: v.get("tail", "")[-500:] for k, v in results.items()}
    assert set(results) == {"bench_eager", "epoch", "torchrun", "kill_resume"}
    bench = results["bench_eager"]
    assert bench["ratio"] == pytest.approx(bench["full_img_s"] / bench["bare_img_s"])
    epoch = results["epoch"]
    assert epoch["steps_per_epoch"] == 10 and epoch["epoch1_s"] > 0 and epoch["epoch2_s"] > 0
    assert epoch["images_per_s"] == pytest.approx(320 / epoch["epoch2_s"], rel=1e-2)
    kill = results["kill_resume"]
    assert kill["killed_at_step"] >= 7 and kill["resumed_from_step"] in (6, 9, 12)
    assert kill["final_step"] == 20 and kill["encoder_exact"]
    assert report["fastest"] == "eager" and report["sizes"]["device"] == "cpu"
    assert "kill -9 + resume" in out and f"wrote {path}" in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("gpu_check_")]


def test_cuda_tests_are_marked_and_skip_without_a_gpu(capsys):
    """``pytest -m cuda`` (what the GPU check's first step runs) selects the tests of
    tests/test_cuda.py alone, all of them (collected in this process)."""
    code = pytest.main(["-q", "-m", "cuda", "-p", "no:cacheprovider", "--collect-only",
                        str(REPO / "tests")])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    collected = [x for x in out.splitlines() if "::" in x]
    assert len(collected) >= 12 and all("test_cuda.py" in x for x in collected)
