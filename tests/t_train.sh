#!/usr/bin/env bash
# t_train.sh: qie-train as a real process on an LMDB cache (stages/train, docs/train.md).
#   - the demo-sized run: a tiny cache on the CPU, progress, checkpoints, a stop and a resume
#     from `latest`, the final weights, a falling loss, in seconds;
#   - exact resume across processes: 60 steps in one run == 25 + stop + resume 35, byte for byte;
#   - crash leftovers: a half-written checkpoint and a temp folder are never `latest`;
#   - the CLI: the reference's ignored flags accepted, unknown ones refused (exit 2).
set -u
. "$(dirname "$0")/shlib.sh"
GOLD=${QIE_GOLDEN_DIR:-tests/golden}/train
TT="${QIE_BUILD:-$PWD/build}/tests/test_train"
MODEL=$GOLD/model
CACHE=$T_TMP/cache
FLAGS=(--pretrained_model_name_or_path "$MODEL" --in "lmdb://$CACHE" --seed 42 --train_batch_size 2
       --gradient_accumulation_steps 2 --max_train_steps 60 --learning_rate 3e-3 --lr_scheduler constant_with_warmup
       --lr_warmup_steps 5 --max_grad_norm 1.0 --uniform_sampling --gradient_checkpointing --checkpointing_steps 20
       --checkpoints_total_limit 2 --log_level warn)

check "demo records" "$TT" --make-demo "$T_TMP/demo.qie" 24
check "cache put" qie-cache put "$CACHE" --in "$T_TMP/demo.qie" --log_level warn

t0=$(date +%s.%N)
check "run: 25 steps then stop" qie-train "${FLAGS[@]}" --output_dir "$T_TMP/a" --stop_after_steps 25
check "stop left checkpoint-25" test -f "$T_TMP/a/checkpoint-25/qie_checkpoint_complete"
check "resume from latest to 60" qie-train "${FLAGS[@]}" --output_dir "$T_TMP/a" --resume_from_checkpoint latest
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "   demo-sized run (60 steps, 2 processes): %.2f s\n", b - a }'
check "final weights" test -f "$T_TMP/a/transformer/config.json"
check "total limit 2" bash -c "[ \$(ls -d '$T_TMP'/a/checkpoint-* | wc -l) -eq 2 ] && [ -d '$T_TMP/a/checkpoint-60' ] && [ -d '$T_TMP/a/checkpoint-40' ]"
check "tensorboard file" bash -c "ls '$T_TMP'/a/logs/text2image-fine-tune/events.out.tfevents.* >/dev/null"
# the loss falls: mean of the last 10 steps well below the first 10
awk -F'"loss":' '{split($2, a, ","); l[NR] = a[1]} END {
    for (i = 1; i <= 10; i++) f += l[i]; for (i = NR - 9; i <= NR; i++) e += l[i];
    printf "   loss: first 10 steps %.4f, last 10 steps %.4f (%d steps)\n", f / 10, e / 10, NR }' "$T_TMP/a/logs/metrics.jsonl"
check "loss falls" awk -F'"loss":' '{split($2, a, ","); l[NR] = a[1]} END {
    for (i = 1; i <= 10; i++) f += l[i]; for (i = NR - 9; i <= NR; i++) e += l[i]; exit !(NR == 60 && e < 0.8 * f) }' \
    "$T_TMP/a/logs/metrics.jsonl"

# exact resume across processes
check "run: 60 steps in one go" qie-train "${FLAGS[@]}" --output_dir "$T_TMP/b"
same() { for f in "$1"/*; do cmp -s "$f" "$2/$(basename "$f")" || return 1; done; }
check "resumed == straight (optimizer state)" same "$T_TMP/a/checkpoint-60/optimizer" "$T_TMP/b/checkpoint-60/optimizer"
check "resumed == straight (weights)" same "$T_TMP/a/transformer" "$T_TMP/b/transformer"

# crash leftovers: an incomplete checkpoint-99 and a temp folder; latest = checkpoint-60
mkdir -p "$T_TMP/b/checkpoint-99/transformer" "$T_TMP/b/.checkpoint-80.tmp.12345"
check "latest skips incomplete" qie-train "${FLAGS[@]}" --output_dir "$T_TMP/b" --resume_from_checkpoint latest \
    --max_train_steps 62 --checkpoints_total_limit 5
check "resumed at 60, not 99" test -f "$T_TMP/b/checkpoint-62/qie_checkpoint_complete"
check "temp folder removed" test ! -e "$T_TMP/b/.checkpoint-80.tmp.12345"

# CLI
check "ignored flags accepted" qie-train "${FLAGS[@]}" --output_dir "$T_TMP/c" --max_train_steps 1 \
    --train_data_dir x --train_data_meta y.json --enable_bucket --random_hw_adapt --image_sample_size 1328 \
    --validation_prompts "a b" c --fix_sample_size 512 512 --dataloader_num_workers 8 --vae_mini_batch 1 \
    --mixed_precision bf16 --allow_tf32 --report_to tensorboard --tokenizer_max_length 1024
rc_of() { "$@" >/dev/null 2>&1; echo $?; }
check "unknown flag: exit 2" test "$(rc_of qie-train "${FLAGS[@]}" --output_dir "$T_TMP/d" --no_such_flag 1)" = 2
check "use_ema refused: exit 2" test "$(rc_of qie-train "${FLAGS[@]}" --output_dir "$T_TMP/d" --use_ema)" = 2
check "missing --in: exit 2" test "$(rc_of qie-train --pretrained_model_name_or_path "$MODEL")" = 2
finish
