#!/usr/bin/env bash
# t_dist.sh: qie-train on several CPU ranks through qie-launch (stages/train/dist.c, docs/train.md
# "Several GPUs"). Real processes, the CPU collective backend (rank-order sums):
#   - DDP, ZeRO-2 (DeepSpeed JSON), ZeRO-3, FSDP FULL_SHARD / SHARD_GRAD_OP on 2 and 4 ranks give
#     the single-process trainer's weights after 6 steps with the same global batch (8 samples:
#     1 rank x GA 4, 2 x GA 2, 4 x GA 1; two epochs), up to fp32 reassociation of the sums;
#   - a world-4 ZeRO-3 checkpoint resumed on 2 ranks (ZeRO-2) and on 1 (the plain trainer)
#     continues the run: equal to uninterrupted runs;
#   - qie-merge of a sharded checkpoint equals the trainer's own transformer/ and the
#     single-process weights (bf16);
#   - a rank killed mid-run ends the job at once with the rank named (launcher exit 137, the
#     survivor exits 86 "lost rank"); a DeepSpeed config that disagrees with the flags is refused.
# Tolerance: max |Δw| <= 2e-6 after 6 AdamW steps at lr 3e-3 (weights up to ~0.4). Sums in another
# order move the gradients by ~1e-7 relative; Adam normalises them, so an element whose gradient
# is tiny can move by a larger fraction of lr (test_train.c says the same for the golden runs).
set -u
. "$(dirname "$0")/shlib.sh"
GOLD=${QIE_GOLDEN_DIR:-tests/golden}/train
TT="${QIE_BUILD:-$PWD/build}/tests/test_train"
MODEL=$GOLD/model
CACHE=$T_TMP/cache
TOL=${QIE_DIST_TOL:-2e-6}
FLAGS=(--pretrained_model_name_or_path "$MODEL" --in "lmdb://$CACHE" --seed 42 --train_batch_size 2
       --max_train_steps 6 --learning_rate 3e-3 --lr_scheduler constant_with_warmup --lr_warmup_steps 2
       --max_grad_norm 1.0 --uniform_sampling --gradient_checkpointing --checkpointing_steps 3 --device cpu
       --progress=false --log_level warn)
L=(qie-launch --device cpu --master_port 0 --log_level warn)
now() { date +%s.%N; }
diff_of() { "$TT" --max-diff "$MODEL" "$1" "$2"; }
within_tol() { awk -v d="${1%% *}" -v t="$2" 'BEGIN { exit !(d <= t) }'; }

check "demo records" "$TT" --make-demo "$T_TMP/demo.qie" 24
check "cache put" qie-cache put "$CACHE" --in "$T_TMP/demo.qie" --log_level warn
cat >"$T_TMP/z2.json" <<'EOF'
{"bf16": {"enabled": true}, "train_micro_batch_size_per_gpu": 1, "train_batch_size": "auto",
 "gradient_accumulation_steps": "auto", "dump_state": true,
 "zero_optimization": {"stage": 2, "overlap_comm": true, "contiguous_gradients": true,
                       "sub_group_size": 1e9, "reduce_bucket_size": 5e8}}
EOF
sed -i 's/"train_micro_batch_size_per_gpu": 1/"train_micro_batch_size_per_gpu": "auto"/' "$T_TMP/z2.json"

check "single process (GA 4)" qie-train "${FLAGS[@]}" --gradient_accumulation_steps 4 --output_dir "$T_TMP/single"
REF=$T_TMP/single/checkpoint-6

strategy_args() { # name -> the flags a user would type
    case $1 in
    ddp) echo "--distributed ddp" ;;
    zero2) echo "--use_deepspeed --deepspeed_config_file $T_TMP/z2.json" ;;
    zero3) echo "--distributed zero3" ;;
    fsdp) echo "--use_fsdp --fsdp_sharding_strategy FULL_SHARD --fsdp_transformer_layer_cls_to_wrap QwenImageTransformerBlock" ;;
    sgo) echo "--use_fsdp --fsdp_sharding_strategy SHARD_GRAD_OP" ;;
    esac
}
worst=0
for w in 2 4; do
    ga=$((4 / w))
    for s in ddp zero2 zero3 fsdp sgo; do
        [ "$s" = sgo ] && [ "$w" = 4 ] && continue
        t0=$(now)
        # shellcheck disable=SC2046
        "${L[@]}" --nproc_per_node $w qie-train "${FLAGS[@]}" --gradient_accumulation_steps $ga \
            $(strategy_args $s) --output_dir "$T_TMP/$s$w" 2>"$T_TMP/$s$w.err"
        check "$s on $w ranks: exit 0" test $? -eq 0 || tail -5 "$T_TMP/$s$w.err"
        d=$(diff_of "$REF" "$T_TMP/$s$w/checkpoint-6")
        awk -v a="$t0" -v b="$(now)" -v s="$s" -v w="$w" -v d="$d" \
            'BEGIN { printf "   %-5s x%d: %.2f s, max |w - w_single| = %s\n", s, w, b - a, d }'
        check "$s on $w ranks == single process" within_tol "$d" "$TOL"
        worst=$(awk -v a="$worst" -v b="${d%% *}" 'BEGIN { print (b > a) ? b : a }')
    done
done
echo "   worst max |Δw| vs the single process: $worst (tolerance $TOL)"
check "zero3 checkpoint: 4 rank files + layout" test -f "$T_TMP/zero34/checkpoint-6/rank-00003-of-00004.safetensors" -a \
    -f "$T_TMP/zero34/checkpoint-6/layout.json" -a -f "$T_TMP/zero34/checkpoint-6/qie_checkpoint_complete"
check "ddp checkpoint: one file" test -f "$T_TMP/ddp4/checkpoint-6/rank-00000-of-00001.safetensors"
check "every checkpoint has transformer/" test -f "$T_TMP/zero24/checkpoint-3/transformer/config.json"
check "final weights" test -f "$T_TMP/fsdp4/transformer/diffusion_pytorch_model.safetensors"

# resume on another world size: zero3 x4 stops at 3; continue on 2 ranks (zero2) and on 1 (plain)
"${L[@]}" --nproc_per_node 4 qie-train "${FLAGS[@]}" --gradient_accumulation_steps 1 --distributed zero3 \
    --output_dir "$T_TMP/r4" --stop_after_steps 3 2>"$T_TMP/r4.err"
check "zero3 x4: stop at 3" test -f "$T_TMP/r4/checkpoint-3/rank-00003-of-00004.safetensors"
cp -r "$T_TMP/r4" "$T_TMP/r1"
"${L[@]}" --nproc_per_node 2 qie-train "${FLAGS[@]}" --gradient_accumulation_steps 2 --distributed zero2 \
    --output_dir "$T_TMP/r4" --resume_from_checkpoint latest --log_level info 2>"$T_TMP/r2.err"
check "resume x4 -> x2: exit 0" test $? -eq 0
check "resume x4 -> x2: says so" grep -q "written by 4 process(es); continuing on 2" "$T_TMP/r2.err"
d=$(diff_of "$T_TMP/zero22/checkpoint-6" "$T_TMP/r4/checkpoint-6")
echo "   zero3 x4 (3 steps) + zero2 x2 (3 steps) vs zero2 x2 (6 steps): max |Δw| = $d"
check "resume x4 -> x2 == uninterrupted x2" within_tol "$d" "$TOL"
d=$(diff_of "$REF" "$T_TMP/r4/checkpoint-6")
echo "   ... vs the single process: max |Δw| = $d"
check "resume x4 -> x2 == single" within_tol "$d" "$TOL"
qie-train "${FLAGS[@]}" --gradient_accumulation_steps 4 --output_dir "$T_TMP/r1" --resume_from_checkpoint latest \
    2>"$T_TMP/r1.err"
check "resume x4 -> plain single process: exit 0" test $? -eq 0
d=$(diff_of "$REF" "$T_TMP/r1/checkpoint-6")
echo "   zero3 x4 (3 steps) + single process (3 steps) vs single: max |Δw| = $d"
check "resume x4 -> single == single" within_tol "$d" "$TOL"
check "single process resumed a sharded run: writes its own format" test -d "$T_TMP/r1/checkpoint-6/optimizer"
# and the other way: a single-process checkpoint continued by 4 ranks
cp -r "$T_TMP/single" "$T_TMP/s4"
rm -rf "$T_TMP/s4/checkpoint-6"
"${L[@]}" --nproc_per_node 4 qie-train "${FLAGS[@]}" --gradient_accumulation_steps 1 --use_fsdp \
    --output_dir "$T_TMP/s4" --resume_from_checkpoint latest 2>"$T_TMP/s4.err"
check "resume single -> fsdp x4: exit 0" test $? -eq 0
d=$(diff_of "$REF" "$T_TMP/s4/checkpoint-6")
echo "   single (3 steps) + fsdp x4 (3 steps) vs single: max |Δw| = $d"
check "resume single -> x4 == single" within_tol "$d" "$TOL"

# qie-merge of a sharded checkpoint: the trainer's own transformer/, and the single run's weights
check "qie-merge" qie-merge "$T_TMP/zero34/checkpoint-6" "$T_TMP/merged" --log_level warn
check "merge == the checkpoint's transformer/" cmp -s "$T_TMP/merged/diffusion_pytorch_model.safetensors" \
    "$T_TMP/zero34/checkpoint-6/transformer/diffusion_pytorch_model.safetensors"
check "merge == final weights" cmp -s "$T_TMP/merged/diffusion_pytorch_model.safetensors" \
    "$T_TMP/zero34/transformer/diffusion_pytorch_model.safetensors"
d=$(diff_of "$T_TMP/single/transformer" "$T_TMP/merged")
echo "   qie-merge (zero3 x4) vs single-process transformer/ (bf16): max |Δw| = $d"
# equal bf16 unless a master sits on a rounding boundary: then one bf16 ulp (2^-8 relative)
check "merge == single (bf16, at most one ulp)" awk -v d="${d%% *}" -v m="${d##* }" \
    'BEGIN { sub(/\)/, "", m); exit !(d <= m / 256) }'

# a rank that dies: the job ends at once, the rank is named, the survivor says why
t0=$(now)
QIE_TRAIN_KILL_AT=1:2 "${L[@]}" --nproc_per_node 2 qie-train "${FLAGS[@]}" --gradient_accumulation_steps 2 \
    --distributed zero3 --output_dir "$T_TMP/kill" 2>"$T_TMP/kill.err"
rc=$?
# usually the launcher reaps rank 1 first (exit 137, "rank 1 was killed by signal 9"); when rank 0's
# exit 86 is reaped first, the launcher (stages/launch) treats the later SIGKILL as its own and
# names rank 0's "another rank failed first", and rank 0's own line names rank 1
check "killed rank: the job fails (137, or 86 when the echo is reaped first)" test $rc -eq 137 -o $rc -eq 86
check "killed rank: rank 1 named" grep -Eq "rank 1 .*was killed by signal 9|rank 1 .*closed: it died" "$T_TMP/kill.err"
check "killed rank: within 5 s" awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !(b - a < 5) }'
# without a launcher (srun / mpirun, or ranks on another node): the survivor finds out through
# the collectives, names the dead rank and exits 86 (RDZV_EXIT_PEER)
port=$(test_ports 1)
env RANK=1 LOCAL_RANK=1 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port QIE_TRAIN_KILL_AT=1:2 \
    qie-train "${FLAGS[@]}" --gradient_accumulation_steps 2 --distributed zero3 --output_dir "$T_TMP/kill2" 2>/dev/null &
env RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    qie-train "${FLAGS[@]}" --gradient_accumulation_steps 2 --distributed zero3 --output_dir "$T_TMP/kill2" 2>"$T_TMP/kill2.err"
rc=$?
wait
check "survivor exits 86" test $rc -eq 86
check "survivor names the dead rank" grep -q "rank 1 .*closed: it died" "$T_TMP/kill2.err"

# flags that disagree with a DeepSpeed config, and a bad strategy: exit 2 before any rendezvous
sed 's/"gradient_accumulation_steps": "auto"/"gradient_accumulation_steps": 3/' "$T_TMP/z2.json" >"$T_TMP/bad.json"
rc_of() { "$@" >/dev/null 2>&1; echo $?; }
check "DeepSpeed config mismatch: exit 2" test "$(rc_of qie-train "${FLAGS[@]}" --output_dir "$T_TMP/x" \
    --use_deepspeed --deepspeed_config_file "$T_TMP/bad.json")" = 2
check "unknown --distributed: exit 2" test "$(rc_of qie-train "${FLAGS[@]}" --output_dir "$T_TMP/x" --distributed zero9)" = 2
finish
