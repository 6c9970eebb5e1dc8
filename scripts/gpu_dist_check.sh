#!/usr/bin/env bash
# scripts/gpu_dist_check.sh [BUILD] [OUT]: qie-train on several GPUs of one host (NCCL), the GPU
# half of tests/t_dist.sh plus benchmarks. BUILD is a CUDA build folder (make CUDA=1 BUILD=...:
# bin/qie-{launch,train,cache,merge} and tests/test_train) or a bundle holding those five
# (scripts/bundle.sh B OUT qie-launch qie-train qie-cache qie-merge; cp B/tests/test_train OUT/).
# Run from the repository root (it reads tests/golden/train). OUT collects logs and summary.txt.
# Needs 2+ GPUs (uses all of them: NGPU = nvidia-smi's count, or $NGPU). About 6 minutes on 4 H100s.
#
#   1. agreement (tiny golden model, demo cache, 6 steps, global batch 8 = 1 GPU x GA 2·NGPU =
#      NGPU x GA 2): ddp, zero2 (DeepSpeed JSON), zero3, fsdp (FULL_SHARD) vs one GPU, max |Δw| of
#      the fp32 master; a zero3 checkpoint of NGPU ranks resumed on NGPU/2 (zero2); qie-merge of it.
#      bf16 compute and NCCL's own sum order: expect ~1e-4 (tolerance 2e-3, printed).
#   2. 8 real-dims layers (D 3072, J 3584, 1024x1024 target + 1 source = 8192 image tokens + 256
#      text), random weights, synthetic latents, batch 1, gradient checkpointing: one GPU (plain,
#      then --param_residency block), then ddp / zero2 / zero3 on NGPU GPUs: step time, model
#      TFLOP/s per GPU (3x forward FLOPs / step time), peak memory per GPU (nvidia-smi).
#   3. the 60-layer real config under zero3 on NGPU GPUs: peak memory per GPU and step time. fp32
#      master + AdamW moments + fp32 gradient shard = 16 B/param / NGPU: 20.4e9 params need 8 x 80 GB;
#      with fewer GPUs the largest layer count that fits is run instead (and said so).
set -u
B=$(cd "${1:-build-cuda}" && pwd); OUT=${2:-gpu-dist-out}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
BIN=$B/bin; [ -d "$BIN" ] || BIN=$B        # a build folder, or a scripts/bundle.sh folder
TT=$B/tests/test_train; [ -x "$TT" ] || TT=$B/test_train
export PATH="$BIN:$PATH" LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu NGPU=2 SECTIONS=1: a dry run of section 1 without GPUs
SECTIONS=${SECTIONS:-123}
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$ROOT/tests/golden/train/model
W=$OUT/work; rm -rf "$W"; mkdir -p "$W"
S=$OUT/summary.txt; : >"$S"
say() { echo "$*" | tee -a "$S"; }
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee -a "$S"
[ "$NGPU" -ge 2 ] || { say "needs 2 or more GPUs, found $NGPU"; exit 1; }
L=(qie-launch --nproc_per_node "$NGPU" --master_port 0 --log_level warn --device "$DEVICE")
fails=0
ok() { if "$@"; then :; else fails=$((fails + 1)); say "   FAILED: $*"; fi; }

# peak memory.used per GPU while a command runs (MiB)
peak_run() { # peak_run NAME cmd...
    local name=$1; shift
    nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 >"$W/$name.mem" 2>/dev/null &
    local mp=$!
    local t0; t0=$(date +%s.%N)
    "$@" >"$W/$name.out" 2>"$W/$name.err"
    local rc=$?
    kill $mp 2>/dev/null; wait $mp 2>/dev/null
    local peaks; peaks=$(awk -F', ' '{ if ($2 > m[$1]) m[$1] = $2 } END { for (g in m) printf "gpu%s %.1f GiB  ", g, m[g] / 1024 }' "$W/$name.mem")
    awk -v a="$t0" -v b="$(date +%s.%N)" -v n="$name" -v rc="$rc" -v p="$peaks" \
        'BEGIN { printf "   %-22s exit %d, %.0f s wall; peak memory: %s\n", n, rc, b - a, p }' | tee -a "$S"
    [ $rc -eq 0 ] || tail -n 5 "$W/$name.err" | tee -a "$S"
    return $rc
}
# mean step time and model TFLOP/s per GPU of metrics.jsonl, skipping the first 2 steps
rate() {
    awk -F'[:,}]' '{ for (i = 1; i < NF; i++) { if ($i ~ /"step_s"/) s = $(i + 1); if ($i ~ /"model_tflops"/) f = $(i + 1) }
                     if (NR > 2) { ss += s; ff += f; n++ } }
                   END { if (n) printf "step %.3f s, %.1f model TFLOP/s per GPU (%d steps)", ss / n, ff / n, n; else printf "no steps" }' "$1"
}

# ---- 1. agreement ----------------------------------------------------------------------------
if [[ $SECTIONS == *1* ]]; then
say "== 1. agreement with one GPU (tiny model, NCCL, $NGPU GPUs)"
"$TT" --make-demo "$W/demo.qie" 24 && qie-cache put "$W/cache" --in "$W/demo.qie" --log_level warn --progress=false
cat >"$W/z2.json" <<'EOF'
{"bf16": {"enabled": true}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
 "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2, "overlap_comm": true,
 "contiguous_gradients": true, "reduce_bucket_size": 5e8}}
EOF
TF=(--pretrained_model_name_or_path "$MODEL" --in "lmdb://$W/cache" --seed 42 --train_batch_size 1 --max_train_steps 6
    --learning_rate 3e-3 --lr_scheduler constant_with_warmup --lr_warmup_steps 2 --max_grad_norm 1.0 --uniform_sampling
    --gradient_checkpointing --checkpointing_steps 3 --device "$DEVICE" --progress=false --log_level warn)
GA1=$((2 * NGPU))
ok qie-train "${TF[@]}" --gradient_accumulation_steps $GA1 --output_dir "$W/a1" 2>"$W/a1.err"
for s in ddp zero2 zero3 fsdp; do
    case $s in
    ddp) a=(--distributed ddp) ;;
    zero2) a=(--use_deepspeed --deepspeed_config_file "$W/z2.json") ;;
    zero3) a=(--distributed zero3) ;;
    fsdp) a=(--use_fsdp --fsdp_sharding_strategy FULL_SHARD --fsdp_transformer_layer_cls_to_wrap QwenImageTransformerBlock) ;;
    esac
    ok "${L[@]}" qie-train "${TF[@]}" --gradient_accumulation_steps 2 "${a[@]}" --output_dir "$W/a_$s" 2>"$W/a_$s.err"
    d=$("$TT" --max-diff "$MODEL" "$W/a1/checkpoint-6" "$W/a_$s/checkpoint-6")
    say "   $s x$NGPU vs 1 GPU: max |Δw| = $d"
    ok awk -v d="${d%% *}" 'BEGIN { exit !(d <= 2e-3) }'
done
half=$((NGPU / 2))
ok "${L[@]}" qie-train "${TF[@]}" --gradient_accumulation_steps 2 --distributed zero3 --output_dir "$W/r" --stop_after_steps 3 \
    2>"$W/r1.err"
ok qie-launch --nproc_per_node $half --master_port 0 --log_level warn --device "$DEVICE" qie-train "${TF[@]}" \
    --gradient_accumulation_steps $((2 * NGPU / half)) --distributed zero2 --output_dir "$W/r" --resume_from_checkpoint latest \
    2>"$W/r2.err"
d=$("$TT" --max-diff "$MODEL" "$W/a1/checkpoint-6" "$W/r/checkpoint-6")
say "   zero3 x$NGPU 3 steps + zero2 x$half 3 steps vs 1 GPU: max |Δw| = $d"
ok awk -v d="${d%% *}" 'BEGIN { exit !(d <= 2e-3) }'
ok qie-merge "$W/a_zero3/checkpoint-6" "$W/merged" --log_level warn
ok cmp -s "$W/merged/diffusion_pytorch_model.safetensors" "$W/a_zero3/transformer/diffusion_pytorch_model.safetensors"
fi

# ---- 2. 8 real-dims layers -------------------------------------------------------------------
if [[ $SECTIONS == *2* ]]; then
# shellcheck source=scripts/dit_config.sh
. "$ROOT/scripts/dit_config.sh"
dit_config "$W/real8" 8
SYN="synthetic://1024x1024?count=64&sources=1&txt=256"
BF=(--pretrained_model_name_or_path "$W/real8" --init_weights random --in "$SYN" --seed 1 --train_batch_size 1
    --gradient_accumulation_steps 1 --max_train_steps 8 --learning_rate 1e-5 --gradient_checkpointing
    --checkpointing_steps 0 --final_save=false --text_drop_ratio 0 --device cuda --progress=false --log_level warn)
say "== 2. 8 real-dims layers, 1024² target + 1024² source (8192 image tokens) + 256 text tokens, batch 1 per GPU"
ok peak_run "1gpu-plain" qie-train "${BF[@]}" --param_residency full --output_dir "$W/b1" && say "      $(rate "$W/b1/logs/metrics.jsonl")"
ok peak_run "1gpu-block" qie-train "${BF[@]}" --param_residency block --output_dir "$W/b1b" &&
    say "      $(rate "$W/b1b/logs/metrics.jsonl")"
for s in ddp zero2 zero3; do
    ok peak_run "${s}-x$NGPU" "${L[@]}" qie-train "${BF[@]}" --distributed $s --output_dir "$W/b_$s" &&
        say "      $(rate "$W/b_$s/logs/metrics.jsonl")"
done

fi

# ---- 3. the 60-layer real config under zero3 -------------------------------------------------
if [[ $SECTIONS == *3* ]]; then
GIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{ printf "%d", $1 / 1024 }')
# 16 B/param/GPU of state (0.3398e9 params per block, 0.05e9 outside) + ~18 GiB of gathered blocks,
# gradient slots, checkpointed activations, CUDA and NCCL buffers
NL=$(awk -v g="$GIB" -v w="$NGPU" 'BEGIN { n = int(((g - 18) * 1.0737e9 * w / 16 - 0.05e9) / 0.3398e9); print (n > 60) ? 60 : n }')
[ "$NL" -lt 60 ] && say "== 3. 60 layers need 16 B/param x 20.4e9 / $NGPU = $(awk -v w=$NGPU 'BEGIN{printf "%.0f", 16*20.44/w}') GB per GPU of fp32 state (> $GIB GiB): running $NL layers"
dit_config "$W/real" "$NL"
say "== 3. zero3, $NL real layers on $NGPU GPUs"
ok peak_run "zero3-L$NL-x$NGPU" "${L[@]}" qie-train "${BF[@]}" --pretrained_model_name_or_path "$W/real" --max_train_steps 4 \
    --distributed zero3 --output_dir "$W/c" && say "      $(rate "$W/c/logs/metrics.jsonl")"
fi
say "== $fails failure(s)"
[ $fails -eq 0 ]
