#!/usr/bin/env bash
# scripts/gpu_train_bench.sh BUNDLE OUT [REF_SCRIPT]: the trainer benchmark of docs/benchmarks.md on
# one GPU host. qie-train (8 layers of the real dimensions, random weights, synthetic latents,
# 1024² and 512² target + one source of the same size + 256 text tokens, batch 1, gradient
# checkpointing, fp32 master + AdamW) in the configurations listed in CONFIGS, then, with
# REF_SCRIPT (shared/bench/reference_transformer_step.py), the PyTorch reference in the same run.
# Prints per configuration: mean step time and model TFLOP/s over the steps after the first two,
# the peak memory qie held (its own allocations, as torch.cuda.max_memory_allocated counts) and the
# peak nvidia-smi showed (CUDA context included).
set -u
b=$1; out=$2; ref=${3:-}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
mkdir -p "$out"
W=$(mktemp -d)
# shellcheck source=scripts/dit_config.sh
. "$(dirname "$0")/dit_config.sh"
dit_config "$W/real8" 8
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
IFS=';' read -r -a configs <<< "${CONFIGS:---param_residency block;--param_residency full}"
for r in ${RES:-1024 512}; do
  for extra in "${configs[@]}"; do
    rm -rf "$W/o"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$W/mem.txt" & mp=$!
    # shellcheck disable=SC2086
    timeout 150 "$b/qie-train" --pretrained_model_name_or_path "$W/real8" --init_weights random \
      --in "synthetic://${r}x${r}?count=64&sources=1&txt=256" --seed 1 --train_batch_size 1 \
      --gradient_accumulation_steps 1 --max_train_steps ${STEPS:-10} --learning_rate 1e-5 --gradient_checkpointing \
      --checkpointing_steps 0 --final_save=false --text_drop_ratio 0 --device cuda --progress=false \
      --log_level info --output_dir "$W/o" $extra > "$W/t.log" 2>&1
    rc=$?
    kill $mp 2>/dev/null; wait $mp 2>/dev/null
    awk -v r="$r" -v x="$extra" -v rc=$rc -v smi="$(sort -n "$W/mem.txt" | tail -1)" -F'[:,}]' '
      { for (i = 1; i < NF; i++) { if ($i ~ /"step_s"/) s = $(i + 1); if ($i ~ /"model_tflops"/) f = $(i + 1);
                                   if ($i ~ /"peak_mem_gib"/) pk = $(i + 1); if ($i ~ /"loss"/) l = $(i + 1) }
        if (NR == 1) l0 = l
        if (NR > 2) { ss += s; ff += f; n++ } }
      END { printf "qie-train %d² [%s] rc=%d: %.4f s/step, %.1f model TFLOP/s (%d steps), peak held %.2f GiB, nvidia-smi %.2f GiB, loss %s -> %s\n",
            r, x, rc, n ? ss / n : 0, n ? ff / n : 0, n, pk, smi / 1024, l0, l }' "$W/o/logs/metrics.jsonl" 2>/dev/null \
      || echo "qie-train ${r}² [$extra] rc=$rc: no metrics"
    grep -E "error|distributed:|peak" "$W/t.log" | head -4 | sed 's/^/    /'
    cp "$W/t.log" "$out/train_${r}_$(echo "$extra" | tr -c 'a-z0-9' _).log"
  done
done
if [ -n "$ref" ]; then
  echo "== reference ($ref)"
  LAYERS=8 timeout 400 python3 "$ref" 2>"$out/ref.err" | tee "$out/ref.jsonl"
fi
rm -rf "$W"
