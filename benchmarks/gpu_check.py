"""The GPU check behind ``benchmarks/gpu_check.sh`` (read its header first): each step is a
function that runs our commands in subprocesses and returns its figures; ``main`` runs them in
order within a time budget, writes every figure to ``benchmarks/gpu/<gpu-name>.json`` and prints
a table. ``--tiny --device cpu`` runs the same steps at toy sizes on a CPU (the tests do).

    python benchmarks/gpu_check.py [--out DIR] [--budget SECONDS] [--tiny --device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: this tree's simclr, no install needed
    sys.path.insert(0, str(REPO))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
    "PYTHONUNBUFFERED": "1", "SIMCLR_NO_CONTENTION_WARNING": "1"}
NO_GPU = "no CUDA GPU found"

from benchmarks.gpu_report import GOALS, LABELS, fastest, summary, table  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """What each step runs: the real check (defaults) or toy sizes for a CPU (:data:`TINY`)."""

    device: str = "cuda"
    n_train: int = 50_000  # CIFAR-10's train split
    n_test: int = 10_000
    batch: int = 512
    width: float = 1.0  # ResNet-18 full width
    precision: str = "bf16"
    bench_steps: int = 20
    bench_windows: int = 3
    bench_warmup: int = 5
    compile_rows: bool = True  # bench torch.compile and CUDA graphs too
    tests: bool = True  # run the cuda tests
    resume_subset: int = 10_240  # kill -9 + resume: 20 steps per epoch at B=512
    resume_epochs: int = 3
    kill_at: int = 27  # SIGKILL once the log passes this step
    checkpoint_every: int = 5
    torchrun_subset: int = 4096


TINY = Sizes(device="cpu", n_train=320, n_test=64, batch=32, width=0.0625, precision="fp32",
             bench_steps=1, bench_windows=1, bench_warmup=1, compile_rows=False, tests=False,
             resume_subset=0, resume_epochs=2, kill_at=7, checkpoint_every=3,
             torchrun_subset=0)


NEEDS = ("torch", "numpy", "PIL", "yaml", "safetensors", "sklearn", "scipy", "tqdm",
         "matplotlib", "pytest", "pytest_timeout", "hypothesis")


def missing_packages() -> list[str]:
    """The modules of :data:`NEEDS` that do not import here."""
    import importlib.util

    return [m for m in NEEDS if importlib.util.find_spec(m) is None]


def gpu_missing() -> str | None:
    """None when torch sees a CUDA GPU, else the one line saying why not."""
    try:
        import torch
    except ImportError as e:
        return f"{NO_GPU}: torch does not import ({e}); pip install torch (a CUDA build)"
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else \
            f"torch {torch.__version__} sees no device (driver? CUDA_VISIBLE_DEVICES?)"
        return f"{NO_GPU} ({build}); run this on a machine with an NVIDIA GPU"
    return None


def environment(device: str) -> dict[str, Any]:
    """GPU name, capability, memory, driver; torch, CUDA, cuDNN, Python; the commit."""
    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "python": platform.python_version(), "device": device,
                           "cpu_count": os.cpu_count()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
        smi = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["driver"] = smi.strip().splitlines()[0] if smi else None
    else:
        env["gpu"] = f"cpu-{platform.machine()}"
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    env["commit"] = (commit or "").strip() or None
    return env


def _output(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def file_name(gpu: str) -> str:
    """'NVIDIA H200' -> 'NVIDIA-H200.json' (letters, digits, '.', '_' and '-' only)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", gpu).strip("-") + ".json"


def write_cifar10_binary(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10's official binary files under ``root/cifar-10-batches-bin/``: five train batches
    (``n_train`` in all) and one test batch of 3073-byte records (label byte + 3 x 32 x 32
    pixels, channel-major), random pixels and labels from ``seed``. Returns ``root``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)] + [n_test]
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name, n in zip(names, sizes, strict=True):
        records = np.empty((n, 3073), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, n)
        records[:, 1:] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text(
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
    return Path(root)


def run(cmd: list[str], timeout: float, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` (our environment, this tree importable); rc, seconds, output tail."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=ENV, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x or ""
                      for x in (e.stdout, e.stderr)) + f"\ntimed out after {timeout:.0f} s"
    return {"ok": rc == 0, "rc": rc, "seconds": round(time.perf_counter() - start, 2),
            "head": out[:600], "tail": out[-2000:]}


def simclr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "simclr", *args]


def common(s: Sizes, data: Path) -> list[str]:
    """The CIFAR-shaped run every pretraining step uses."""
    return ["--data.name=cifar10", f"--data.root={data}", "--data.download=false",
            f"--model.width={s.width}", f"--train.batch_size={s.batch}",
            f"--train.device={s.device}", f"--train.precision={s.precision}",
            "--train.progress=false", "--eval.every=0"]


# ------------------------------------------------------------------------------ the steps


def step_tests(s: Sizes, work: Path, timeout: float = 360) -> dict[str, Any]:
    """``pytest -m cuda`` over tests/test_cuda.py; the counts of its summary line."""
    r = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
             str(REPO / "tests" / "test_cuda.py")], timeout, cwd=REPO)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)",
                                                r["tail"])}
    r.update(counts)
    r["ok"] = r["ok"] and counts.get("passed", 0) > 0
    return r


def step_bench(s: Sizes, work: Path, mode: str, timeout: float = 300) -> dict[str, Any]:
    """``simclr bench`` (eager, ``compile``) or bench_one with compile mode reduce-overhead
    (``graphs``: CUDA graphs) on CIFAR-shaped images: bare vs full step, one JSON row."""
    out = work / f"bench_{mode}.json"
    args = ["--data.name=cifar10", f"--model.width={s.width}", f"--train.batch_size={s.batch}",
            f"--train.device={s.device}", f"--train.precision={s.precision}",
            f"--steps={s.bench_steps}", f"--windows={s.bench_windows}",
            f"--warmup={s.bench_warmup}", "--json", str(out)]
    if mode == "eager":
        r = run(simclr_cmd("bench", *args), timeout)
    elif mode == "compile":
        r = run(simclr_cmd("bench", "--train.compile=true", *args), timeout)
    else:
        r = run([sys.executable, __file__, "--bench-graphs", *args], timeout)
    if r["ok"]:
        row = json.loads(out.read_text())["rows"][0]
        r.update({k: row[k] for k in ("bare_img_s", "full_img_s", "ratio", "gflop_per_step",
                                      "bare_gflop_s", "peak_mem_mb", "precision", "layout")})
    return r


def bench_graphs(argv: list[str]) -> int:
    """``simclr bench`` with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs): not a
    config value, so this process calls bench_one itself."""
    from simclr.cli import _split_overrides
    from simclr.config import build_config
    from simclr.tools.bench import bench_one, environment, format_rows

    p = argparse.ArgumentParser()
    for name in ("--steps", "--windows", "--warmup"):
        p.add_argument(name, type=int)
    p.add_argument("--json", type=Path)
    args, extra = p.parse_known_args(argv)
    cfg = build_config(overrides=[*_split_overrides(extra, p), "train.compile=true"])
    row = bench_one(cfg, args.steps, args.warmup, args.windows, compile_mode="reduce-overhead")
    print(format_rows([row]))
    args.json.write_text(json.dumps({"environment": environment(), "rows": [row]}, indent=2))
    return 0


def epoch_times(run_dir: Path) -> list[float]:
    """Training seconds of each epoch, from metrics.jsonl's cumulative ``time``."""
    ends = [json.loads(x)["time"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"kind": "epoch"' in x]
    return [b - a for a, b in zip([0.0] + ends, ends, strict=False)]


def step_epoch(s: Sizes, work: Path, data: Path, timeout: float = 240) -> dict[str, Any]:
    """Two full CIFAR-shaped epochs through ``simclr pretrain`` (the GPU defaults): each epoch's
    training seconds (the first includes cuDNN autotuning) and the whole command's wall."""
    run_dir = work / "epoch"
    r = run(simclr_cmd("pretrain", "--run-dir", str(run_dir), *common(s, data),
                       "--train.epochs=2", "--train.log_every=100000"), timeout)
    if r["ok"]:
        times = epoch_times(run_dir)
        steps = s.n_train // s.batch
        r.update(epoch1_s=round(times[0], 3), epoch2_s=round(times[1], 3),
                 steps_per_epoch=steps, images_per_s=round(steps * s.batch / times[1], 1),
                 wall_2_epochs_s=r["seconds"])
    return r


def step_torchrun(s: Sizes, work: Path, data: Path, timeout: float = 180) -> dict[str, Any]:
    """``torchrun --standalone --nproc_per_node=1 -m simclr pretrain``: one epoch."""
    subset = [f"--data.subset={s.torchrun_subset}"] if s.torchrun_subset else []
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=1", "-m", "simclr", "pretrain", "--run-dir",
             str(work / "torchrun"), *common(s, data), *subset, "--train.epochs=1"], timeout)
    r["ok"] = r["ok"] and "done:" in r["tail"]
    return r


def step_kill_resume(s: Sizes, work: Path, data: Path, timeout: float = 300) -> dict[str, Any]:
    """An uninterrupted run; the same run SIGKILLed once its log passes ``kill_at``, then the
    same command again: it must resume from the last checkpoint and end with the encoder of
    the uninterrupted run (exactly on a CPU; up to floating-point noise on a GPU)."""
    import torch
    from safetensors.torch import load_file

    from tests.helpers import last_step  # the reliability tests' own kill point

    subset = [f"--data.subset={s.resume_subset}"] if s.resume_subset else []
    args = [*common(s, data), *subset, f"--train.epochs={s.resume_epochs}",
            "--train.log_every=1", f"--train.checkpoint_every={s.checkpoint_every}"]
    start = time.perf_counter()
    straight = run(simclr_cmd("pretrain", "--run-dir", str(work / "straight"), *args), timeout)
    if not straight["ok"]:
        return {**straight, "stage": "uninterrupted run"}
    crashed = work / "crashed"
    proc = subprocess.Popen(simclr_cmd("pretrain", "--run-dir", str(crashed), *args), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while last_step(crashed) < s.kill_at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    killed_at = last_step(crashed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        return {"ok": False, "rc": proc.returncode, "stage": "kill",
                "tail": "the run ended before it could be killed", "seconds": 0.0}
    resumed_from = torch.load(crashed / "checkpoint.pt", weights_only=True)["step"] \
        if (crashed / "checkpoint.pt").exists() else 0
    again = run(simclr_cmd("pretrain", "--run-dir", str(crashed), *args), timeout)
    if not again["ok"]:
        return {**again, "stage": "resumed run"}
    a = load_file(str(work / "straight" / "encoder.safetensors"))
    b = load_file(str(crashed / "encoder.safetensors"))
    exact = all(torch.equal(a[k], b[k]) for k in a)
    diff = max(float((a[k].double() - b[k].double()).norm() / (a[k].double().norm() or 1.0))
               for k in a if a[k].is_floating_point())
    final = torch.load(crashed / "checkpoint.pt", weights_only=True)["step"]
    resumed_line = f"resuming at step {resumed_from}" in again["head"] or resumed_from == 0
    ok = resumed_line and final == last_step(work / "straight") and diff < 1e-2 and \
        (exact or s.device != "cpu")
    return {"ok": ok, "rc": again["rc"], "seconds": round(time.perf_counter() - start, 2),
            "killed_at_step": killed_at, "resumed_from_step": resumed_from,
            "final_step": final, "encoder_exact": exact, "encoder_rel_diff": diff,
            "tail": again["tail"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu")
    p.add_argument("--budget", type=float, default=450.0,
                   help="seconds; the optional step (CUDA graphs) is skipped past it")
    p.add_argument("--tiny", action="store_true", help="toy sizes (for a CPU: with --device cpu)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    s = replace(TINY if args.tiny else Sizes(), device=args.device)
    if s.device == "cuda" and (why := gpu_missing()):
        print(f"gpu_check: {why}", file=sys.stderr)
        return 1
    if missing := missing_packages():
        print(f"gpu_check: missing Python packages {', '.join(missing)}; install them "
              "(offline: as wheels, see the header of benchmarks/gpu_check.sh)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    env = environment(s.device)
    print(f"gpu_check: {env}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.work) as tmp:
        work = Path(tmp)
        data = write_cifar10_binary(work / "data", s.n_train, s.n_test)
        results: dict[str, dict] = {}

        def step(name: str, fn, *fargs, optional: bool = False, need: float = 0.0) -> None:
            left = args.budget - (time.perf_counter() - start)
            if optional and left < need:
                results[name] = {"ok": False, "skipped": f"time budget ({left:.0f} s left)"}
            else:
                print(f"gpu_check: {LABELS[name]} ...", flush=True)
                results[name] = fn(*fargs)
                print(f"gpu_check: {LABELS[name]}: {summary(name, results[name])}", flush=True)

        if s.tests:
            step("tests", step_tests, s, work)
        step("bench_eager", step_bench, s, work, "eager")
        if s.compile_rows:
            step("bench_compile", step_bench, s, work, "compile")
        step("epoch", step_epoch, s, work, data)
        step("torchrun", step_torchrun, s, work, data)
        step("kill_resume", step_kill_resume, s, work, data)
        if s.compile_rows:  # last, and only when the budget leaves room for a compile
            step("bench_graphs", step_bench, s, work, "graphs", optional=True, need=120)
    report = {"environment": env, "sizes": asdict(s), "goals": GOALS, "results": results,
              "fastest": fastest(results), "seconds": round(time.perf_counter() - start, 1),
              "command": "bash benchmarks/gpu_check.sh"}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / file_name(env["gpu"])
    path.write_text(json.dumps(report, indent=2))
    print(table(env, s, results))
    print(f"gpu_check: {report['seconds']:.0f} s; wrote {path}")
    return 0 if all(r.get("ok") or r.get("skipped") for r in results.values()) else 1


if __name__ == "__main__":
    code = bench_graphs(sys.argv[2:]) if sys.argv[1:2] == ["--bench-graphs"] else main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as simclr.cli.exit_now: skip native exit handlers (torch CPU builds crash)
