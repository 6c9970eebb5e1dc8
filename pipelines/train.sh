#!/usr/bin/env bash
# pipelines/train.sh: VideoX-Fun's Qwen-Image-Edit launch commands (trainer_behaviour.md §2.1) as
# qie commands, with the same flags and the same environment variables. Each run first makes sure
# the cache is complete (pipelines/cache.sh: a no-op when it is), then trains from it.
#
#   export MODEL_NAME=models/Diffusion_Transformer/Qwen-Image-Edit
#   export DATASET_NAME=datasets/X-Fun-Images-Edit-Demo/
#   export DATASET_META_NAME=datasets/X-Fun-Images-Edit-Demo/metadata_add_width_height.json
#   pipelines/train.sh plain|zero2|zero3|fsdp|multinode [extra trainer flags...]
#
# Environment (defaults in brackets):
#   CACHE      the latent cache [$DATASET_NAME/.qie-cache]
#   NPROC      GPUs per node for the sharded modes [auto: every visible GPU]
#   DEVICE     cuda | cpu [cuda when a GPU is visible]
#   CACHE_FLAGS extra pipelines/cache.sh flags (e.g. "--jobs 16")
#   multinode: MASTER_ADDR, MASTER_PORT, NUM_MACHINES (the doc's WORLD_SIZE), MACHINE_RANK (its RANK)
# What the modes map to (docs/from-videox-fun.md has the flag-by-flag table):
#   plain      accelerate launch --mixed_precision=bf16 train_edit.py      -> qie-train
#   zero2      ... --use_deepspeed --deepspeed_config_file zero_stage2      -> qie-launch --nproc_per_node N qie-train --distributed zero2
#   zero3      ... --zero_stage 3 ... zero_stage3 config; zero_to_bf16.py  -> qie-launch ... --distributed zero3; qie-merge
#   fsdp       ... --use_fsdp --fsdp_sharding_strategy FULL_SHARD          -> qie-launch ... --distributed fsdp
#   (the reference's own spellings, --use_deepspeed --deepspeed_config_file F and --use_fsdp ..., work too)
#   multinode  the ZeRO-2 command on every machine                          -> qie-launch --nnodes/--node_rank/--master_* ...
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="${QIE_BIN:-$here/build/bin}:$PATH"
mode=${1:-}; shift || true
: "${MODEL_NAME:?set MODEL_NAME (the model folder)}" "${DATASET_NAME:?set DATASET_NAME}" "${DATASET_META_NAME:?set DATASET_META_NAME}"
CACHE=${CACHE:-$DATASET_NAME/.qie-cache}
DEVICE=${DEVICE:-$( [ -e /proc/driver/nvidia/gpus ] && ls /proc/driver/nvidia/gpus | grep -q . && echo cuda || echo cpu)}
NPROC=${NPROC:-auto}
output_dir=output_dir_qwenimage_edit
[ "$mode" = zero3 ] && output_dir=output_dir   # the doc's ZeRO-3 command writes to output_dir

# the 24 common trainer flags of every command (trainer_behaviour.md §2.1)
common=(--pretrained_model_name_or_path="$MODEL_NAME" --train_data_dir="$DATASET_NAME"
        --train_data_meta="$DATASET_META_NAME" --train_batch_size=1 --image_sample_size=1328
        --gradient_accumulation_steps=1 --dataloader_num_workers=8 --num_train_epochs=100
        --checkpointing_steps=50 --learning_rate=2e-05 --lr_scheduler=constant_with_warmup --lr_warmup_steps=100
        --seed=42 --output_dir="$output_dir" --gradient_checkpointing --mixed_precision=bf16
        --adam_weight_decay=3e-2 --adam_epsilon=1e-10 --vae_mini_batch=1 --max_grad_norm=0.05 --enable_bucket
        --uniform_sampling --trainable_modules "." --train_mode qwen_image_edit)

# 1. the cache: decode + encode what it does not hold yet (idempotent by id)
# shellcheck disable=SC2086
bash "$here/pipelines/cache.sh" "${common[@]}" "$@" --cache "$CACHE" --device "$DEVICE" ${CACHE_FLAGS:-} \
    --skip_ids <(qie-cache ls "$CACHE" --ids_only 2>/dev/null || :)

# 2. the trainer, reading the cache (the reference's data flags are accepted and reported as
# ignored by qie-train; the extra flags only the caching stages know are left out here)
known=$(qie-train --help 2>&1 | grep -o -- '--[a-z0-9_]*' | sort -u)
extra=()
while [ $# -gt 0 ]; do
    a=$1; shift; k=${a%%=*}; k=--${k#--}; k=${k//-/_}; k=--${k#__}
    v=(); if [[ $a != *=* ]] && [ $# -gt 0 ] && [[ $1 != --* ]]; then v=("$1"); shift; fi
    if grep -qx -- "$k" <<< "$known"; then extra+=("$a" "${v[@]}"); fi
done
train=(qie-train "${common[@]}" --in "lmdb://$CACHE" --device "$DEVICE" "${extra[@]}")
launch=(qie-launch --nproc_per_node "$NPROC" --device "$DEVICE")
case $mode in
    plain) exec "${train[@]}" ;;
    zero2) exec "${launch[@]}" "${train[@]}" --distributed zero2 ;;
    fsdp) exec "${launch[@]}" "${train[@]}" --distributed fsdp ;;
    zero3)
        "${launch[@]}" "${train[@]}" --distributed zero3
        # zero_to_bf16.py output_dir/checkpoint-N output_dir/checkpoint-N-outputs --max_shard_size 80GB --safe_serialization
        last=$(ls -d "$output_dir"/checkpoint-[0-9]* 2>/dev/null | sort -t- -k2 -n | tail -1)
        [ -n "$last" ] && [ -e "$last"/layout.json ] &&
            qie-merge "$last" "$last-outputs" --max_shard_size 80GB --safe_serialization
        ;;
    multinode)
        : "${MASTER_ADDR:?}" "${MASTER_PORT:?}" "${NUM_MACHINES:?}" "${MACHINE_RANK:?}"
        exec "${launch[@]}" --nnodes "$NUM_MACHINES" --node_rank "$MACHINE_RANK" --master_addr "$MASTER_ADDR" \
            --master_port "$MASTER_PORT" "${train[@]}" --distributed zero2 ;;
    *) sed -n '2,27p' "$0" >&2; exit 2 ;;
esac
