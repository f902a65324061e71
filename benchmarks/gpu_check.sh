#!/usr/bin/env bash
# benchmarks/gpu_check.sh: simclr's GPU check, run as it is on a machine with one NVIDIA GPU:
#
#     bash benchmarks/gpu_check.sh          # about 6-8 minutes on an H100/H200
#
# What it needs: python3 with torch >= 2.4 (a CUDA build) and simclr's own dependencies
# (numpy, pillow, pyyaml, safetensors, scikit-learn, scipy, tqdm, matplotlib), plus pytest,
# pytest-timeout and hypothesis for its test step. simclr itself is NOT installed: it runs from
# this working tree through PYTHONPATH. Nothing is downloaded: the CIFAR-shaped data is written
# here in CIFAR-10's official binary format (random pixels).
# On an offline machine: copy this whole working tree (simclr/, tests/, benchmarks/, configs/,
# pyproject.toml); a missing Python package travels as a wheel (`pip download --no-deps NAME`
# where there is a network, `pip install --no-index --no-deps WHEEL` there).
# Environment: PYTHON (default python3); GPU_CHECK_ARGS (extra arguments, e.g. "--budget 600").
#
# Steps (each in its own process, each with a time limit; a failing step is recorded and the
# next one still runs):
#   1. the GPU (name, compute capability, memory, driver), torch, CUDA and cuDNN versions
#   2. the `cuda` tests: pytest -m cuda tests/test_cuda.py
#   3. CIFAR-shaped data: 50 000 train + 10 000 test 32x32 images, cifar-10-batches-bin/
#   4. simclr bench, ResNet-18 full width, batch 512, bf16, channels_last: eager, then
#      train.compile=true; each row shows the bare model step vs the full pretraining step
#   5. one CIFAR-shaped epoch end to end: simclr pretrain for 2 epochs of 97 steps at B=512
#      (the GPU defaults); epoch 1 includes cuDNN autotuning, epoch 2 is the figure
#   6. torchrun --standalone --nproc_per_node=1 -m simclr pretrain (one epoch of a subset)
#   7. kill -9 + resume: an uninterrupted run; the same run SIGKILLed at step 27 and started
#      again; it must resume from its checkpoint and end at the same step with the same encoder
#      up to GPU floating-point noise
#   8. if the time budget (450 s) leaves room: bench with CUDA graphs (torch.compile mode
#      reduce-overhead)
# Every figure goes to benchmarks/gpu/<gpu-name>.json; a table is printed last. Goals (issue
# 14): epoch 2 <= 2 s on an H200, full step >= 0.9x the bare step, the fastest of eager /
# compile / CUDA graphs becomes the GPU default. Exit status: 0 when every step passed.
# Without a GPU it exits at once (status 1) with one line saying so.
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; then
    echo "gpu_check: no CUDA GPU found (no nvidia-smi, no /dev/nvidia0); run this on a machine with an NVIDIA GPU" >&2
    exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# shellcheck disable=SC2086
exec "$PY" benchmarks/gpu_check.py ${GPU_CHECK_ARGS:-}
