#!/usr/bin/env bash
# pipelines/cache.sh: the caching pipeline, one shell pipeline of stages:
#
#   qie-decode | qie-encode-vae | qie-encode-text | qie-cache put CACHE
#
# It takes the reference trainer's command line (VideoX-Fun train_edit.py flags, --k v or --k=v)
# plus qie's, and gives each stage the flags that concern it; trainer-only flags (learning rate,
# checkpoints, ...) are accepted and listed once as left to qie-train, so the same flag list can be
# pasted here and into pipelines/train.sh.
#
#   pipelines/cache.sh --pretrained_model_name_or_path MODEL --train_data_dir DATA \
#       --train_data_meta DATA/metadata.json --image_sample_size 1328 --enable_bucket \
#       --train_mode qwen_image_edit --cache /data/cache [--device cuda] [--jobs 8]
#
# qie's own flags:
#   --cache DIR          the LMDB cache to fill (a re-run skips what it holds: docs/cache.md)
#   --out URL            instead of --cache: where the encoded records go (tcp://, ipc://, -, FILE)
#   --in URL             start at the encoders, reading records from URL (decoders elsewhere)
#   --only decode|encode run one half: the decoder (to --out) or the encoders (+ the cache writer)
#   --device D           cpu | cuda | cuda:N for both encoders (default cpu)
#   --text_drop_ratio R  caption dropout the trainer will use (default 0.1, the reference's): > 0
#                        also caches the empty-prompt embedding and records the setting
#   --cache_batch N      records per cache commit (default 64)
#   any other qie-decode / qie-encode-vae / qie-encode-text flag (docs/decode.md, vae.md,
#   text-encoder.md): --jobs, --shard, --rejects, --skip_ids, --vae_image_area, --vae_mini_batch, ...
# Exit status: non-zero when any stage failed (the cache keeps every whole record that arrived;
# run the same command again to finish).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="${QIE_BIN:-$here/build/bin}:$PATH"

dec=() vae=() txt=() common=() ignored=()
model= cache= out= in= only= device=cpu drop=0.1 mode=qwen_image_edit batch=64
while [ $# -gt 0 ]; do
    a=$1; shift
    case $a in
        --*=*) k=${a%%=*}; v=${a#*=}; hv=1 ;;
        --*) k=$a; v=; hv=0 ;;
        *) echo "cache.sh: unexpected argument '$a' (flags are --name value)" >&2; exit 2 ;;
    esac
    k=${k#--}; k=${k//-/_}
    # the value of a flag that takes one: --k=v or the next word
    case $k in
        enable_bucket|random_hw_adapt|strict|random_ratio_crop|keep_pixels|keep_cond|progress) ;;
        *) if [ $hv = 0 ]; then
               if [ $# -gt 0 ] && [[ $1 != --* ]]; then v=$1; shift; hv=1; fi
           fi ;;
    esac
    flag=(--$k); [ $hv = 1 ] && flag=(--$k "$v")
    case $k in
        pretrained_model_name_or_path|model) model=$v ;;
        cache) cache=$v ;;
        out) out=$v ;;
        in) in=$v ;;
        only) only=$v ;;
        device) device=$v ;;
        text_drop_ratio) drop=$v ;;
        cache_batch) batch=$v ;;
        train_mode) mode=$v ;;
        log_level) common+=("${flag[@]}") ;;
        progress) common+=("$a") ;;
        train_data_meta|train_data_dir|image_sample_size|seed|hw_adapt_draws|max_pixels|vae_image_area|\
        condition_image_area|jobs|shard|rejects|skip_ids|enable_bucket|random_hw_adapt|strict|\
        random_ratio_crop|fix_sample_size)
            dec+=("${flag[@]}") ;;
        vae_mini_batch|posterior_dtype|keep_pixels) vae+=("${flag[@]}") ;;
        max_batch_tokens|window|keep_cond|prep_threads) txt+=("${flag[@]}") ;;
        dataloader_num_workers) [ $hv = 1 ] && [ "$v" -gt 0 ] 2>/dev/null && dec+=(--jobs "$v") ;;
        *) ignored+=("--$k") ;;
    esac
done
[ ${#ignored[@]} -gt 0 ] && echo "cache.sh: left to qie-train: ${ignored[*]}" >&2
case $only in ""|decode|encode) ;; *) echo "cache.sh: --only decode|encode" >&2; exit 2 ;; esac
if [ "$only" != decode ]; then
    [ -n "$model" ] || { echo "cache.sh: --pretrained_model_name_or_path MODEL is required" >&2; exit 2; }
    [ -n "$cache" ] || [ -n "$out" ] || { echo "cache.sh: --cache DIR or --out URL is required" >&2; exit 2; }
fi

decode() { exec qie-decode --train_mode "$mode" "${dec[@]}" "${common[@]}" --out "$1"; }
encode() { # encode IN_URL: both encoders, records to stdout. Order: the VAE encoder drops the pixel
    # tensors and the text encoder drops source_cond.k. Plus conditions the vision tower on
    # source_cond.k, so the VAE can go first; Edit v1 conditions it on source_pixels.0 (model.md
    # §3.4), so there the text encoder goes first.
    local v=(qie-encode-vae --model "$model" --device "$device" "${vae[@]}" "${common[@]}")
    local t=(qie-encode-text --model "$model" --device "$device" --train_mode "$mode" --text_drop_ratio "$drop"
             "${txt[@]}" "${common[@]}")
    if [ "$mode" = qwen_image_edit ]; then
        "${t[@]}" --in "$1" | "${v[@]}" --out "${out:--}"
    else
        "${v[@]}" --in "$1" | "${t[@]}" --out "${out:--}"
    fi
}
sink() { # the cache writer, or nothing when --out sends the records elsewhere
    if [ -n "$cache" ]; then
        qie-cache put "$cache" --in - --batch "$batch" --setting "text_drop_ratio=$drop" "${common[@]}"
    else cat; fi
}

set -o pipefail
case $only in
    decode) decode "${out:--}" ;;   # exec: the decoder's pid is this script's (scale-out.sh kills by it)
    encode) encode "${in:--}" | sink ;;
    "") if [ -n "$in" ]; then encode "$in" | sink; else decode - | encode - | sink; fi ;;
esac
