#!/usr/bin/env bash
# scripts/gpu_bench_batch.sh BUNDLE OUT REFDIR: one device call's worth of checks and benchmarks on
# a GPU host: every GPU test in the bundle, then each qie benchmark next to its PyTorch reference
# on the same GPU in the same run. Needs torch on the host and diffusers on PYTHONPATH.
set -u
b=$1; out=$2; ref=$3
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for t in "$b"/test_*_gpu; do echo "== $(basename "$t")"; timeout 120 "$t" 2>&1 | tail -3; done > "$out/tests.txt" 2>&1
for r in 1024 512; do timeout 120 "$b/bench_dit" --layers 8 --res $r 2>&1 | tail -1; done > "$out/qie_dit.jsonl"
timeout 60 "$b/bench_vae" --batch 1 --iters 10 > "$out/qie_vae.txt" 2>&1
timeout 60 "$b/bench_text" --prompts 32 --batch 8 --iters 3 > "$out/qie_text.txt" 2>&1
LAYERS=8 timeout 300 python3 "$ref/reference_transformer_step.py" > "$out/ref_dit.jsonl" 2>"$out/ref_dit.err"
timeout 90 python3 scripts/bench_vae_ref.py --iters 10 > "$out/ref_vae.txt" 2>&1
timeout 90 python3 scripts/bench_text_ref.py --prompts 16 --iters 2 > "$out/ref_text.txt" 2>&1
tail -n +1 "$out"/*.txt "$out"/*.jsonl | cut -c1-400
