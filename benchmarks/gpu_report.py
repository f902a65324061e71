"""The report of benchmarks/gpu_check.py: each step's figures in one line, the goals of issue
14 (met or not), the fastest bench mode, and the table printed last."""

from __future__ import annotations

from typing import Any

GOALS = {"epoch_s": 2.0, "full_over_bare": 0.9}  # issue 14, for an H200


def fastest(results: dict[str, dict]) -> str | None:
    """The bench mode (eager / compile / graphs) with the highest full-step images/s."""
    rows = {m: r for m, r in results.items() if m.startswith("bench_") and r.get("ok")}
    if not rows:
        return None
    return max(rows, key=lambda m: rows[m]["full_img_s"]).removeprefix("bench_")


def summary(name: str, r: dict[str, Any]) -> str:
    """The figures column of the table for one step's result."""
    if r.get("skipped"):
        return f"skipped: {r['skipped']}"
    if not r.get("ok"):
        lines = [x for x in str(r.get("tail", "")).strip().splitlines() if x.strip()]
        why = lines[-1][:110] if lines else f"exit {r.get('rc')}"
        return f"FAILED ({r.get('stage', 'rc ' + str(r.get('rc')))}): {why}"
    if name == "tests":
        return (f"{r.get('passed', 0)} passed, {r.get('skipped', 0)} skipped, "
                f"{r.get('failed', 0)} failed in {r['seconds']:.0f} s")
    if name.startswith("bench_"):
        goal = "met" if r["ratio"] >= GOALS["full_over_bare"] else "NOT met"
        return (f"bare {r['bare_img_s']:.0f} img/s, full {r['full_img_s']:.0f} img/s, "
                f"full/bare {r['ratio']:.3f} (goal >= {GOALS['full_over_bare']}: {goal}), "
                f"{r['bare_gflop_s'] / 1000:.1f} TFLOP/s bare, {r['peak_mem_mb']:.0f} MB")
    if name == "epoch":
        goal = "met" if r["epoch2_s"] <= GOALS["epoch_s"] else "NOT met"
        return (f"epoch 2: {r['epoch2_s']:.2f} s = {r['images_per_s']:.0f} img/s (goal <= "
                f"{GOALS['epoch_s']:g} s: {goal}); epoch 1 (autotuning): {r['epoch1_s']:.2f} s; "
                f"2 epochs end to end {r['wall_2_epochs_s']:.1f} s")
    if name == "kill_resume":
        return (f"killed at step {r['killed_at_step']}, resumed from {r['resumed_from_step']}, "
                f"ended at {r['final_step']}; encoder vs uninterrupted: "
                + ("identical" if r["encoder_exact"] else f"rel diff {r['encoder_rel_diff']:.1e}"))
    return f"done in {r['seconds']:.1f} s"


LABELS = {"tests": "cuda tests", "bench_eager": "bench eager", "bench_compile": "bench compile",
          "bench_graphs": "bench CUDA graphs", "epoch": "CIFAR epoch", "torchrun":
          "torchrun nproc=1", "kill_resume": "kill -9 + resume"}


def table(env: dict[str, Any], s, results: dict[str, dict]) -> str:
    """Header (GPU, versions, sizes ``s``: a gpu_check.Sizes), one row per step, the fastest."""
    head = (f"gpu_check: {env['gpu']}"
            + (f" (sm {env['capability']}, {env['gpu_memory_gib']} GiB, driver "
               f"{env.get('driver')})" if s.device == "cuda" else "")
            + f", torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env.get('cudnn')}, "
            f"ResNet-18 x{s.width:g}, batch {s.batch}, {s.precision}, commit {env['commit']}")
    width = max(len(v) for v in LABELS.values())
    rows = [f"{LABELS[k]:<{width}}  {'ok' if r.get('ok') else '--' if r.get('skipped') else 'FAIL'}"
            f"  {summary(k, r)}" for k, r in results.items()]
    best = fastest(results)
    if best:
        rows.append(f"{'fastest step':<{width}}  {best}")
    return "\n".join([head, *rows])
