#!/usr/bin/env bash
# bench_vae.sh: qie's VAE encoder (tests/bench/bench_vae.c) against diffusers' (scripts/bench_vae_ref.py)
# at 1024x1024, real configuration, random weights, bf16, on this machine's first GPU.
# Usage (repository root, a CUDA host): scripts/bench_vae.sh [batch] [iters]
# Needs nvcc and the build packages for the C side; torch + diffusers for the reference (skipped
# with a note when they are missing). Report the GPU model with the numbers: H100 and H200 differ.
set -euo pipefail
batch=${1:-1}; iters=${2:-10}
B=${BUILD:-build-cuda}
make --no-print-directory CUDA=1 BUILD=$B -j"$(nproc)" $B/tests/bench/bench_vae >/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
"$B"/tests/bench/bench_vae --size 1024 --batch "$batch" --iters "$iters"
if python3 -c "import torch, diffusers" 2>/dev/null; then
    python3 scripts/bench_vae_ref.py --size 1024 --batch "$batch" --iters "$iters"
else
    echo "reference skipped: python3 cannot import torch and diffusers"
fi
