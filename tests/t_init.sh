#!/usr/bin/env bash
# t_init: qie-init writes models that qie's own C loaders load (vae_load through qie-encode-vae,
# qwenvl_create through qie-encode-text, dit_create_from_dir through qie-train), deterministically
# from --seed, sharded or not, from presets and config files. (scripts/golden/check_init.py proves
# the same models load in diffusers/transformers; it needs Python and is not part of CI.)
source "$(dirname "$0")/shlib.sh"
T=120
M=$T_TMP/m

layout_complete() {
    local d=$1 f
    for f in model_index.json transformer/config.json vae/config.json vae/diffusion_pytorch_model.safetensors \
        text_encoder/config.json tokenizer/vocab.json tokenizer/merges.txt tokenizer/tokenizer_config.json \
        tokenizer/special_tokens_map.json processor/preprocessor_config.json processor/vocab.json \
        scheduler/scheduler_config.json; do
        [ -s "$d/$f" ] || { echo "missing $f"; return 1; }
    done
    ls "$d"/transformer/diffusion_pytorch_model*.safetensors > /dev/null && ls "$d"/text_encoder/model*.safetensors > /dev/null
}
check "tiny model: the diffusers layout" bash -c "qie-init --out '$M' --variant edit-2509 --log_level warn && $(declare -f layout_complete); layout_complete '$M'"
check "model_index names the Plus pipeline for edit-2509" grep -q QwenImageEditPlusPipeline "$M/model_index.json"
check "same seed, same bytes" bash -c "qie-init --out '$T_TMP/m2' --variant edit-2509 --log_level quiet &&
    diff -r '$M' '$T_TMP/m2' > /dev/null"
check "another seed, other weights" bash -c "qie-init --out '$T_TMP/m3' --seed 7 --log_level quiet &&
    ! cmp -s '$M/transformer/diffusion_pytorch_model.safetensors' '$T_TMP/m3/transformer/diffusion_pytorch_model.safetensors'"
check "an existing model is not overwritten without --overwrite" bash -c "! qie-init --out '$M' --log_level quiet 2>/dev/null"
check "--overwrite replaces it" qie-init --out "$T_TMP/m3" --overwrite --seed 8 --log_level quiet
check "bad --config and --variant are usage errors (exit 2)" bash -c "
    qie-init --out '$T_TMP/x' --config nope --log_level quiet 2>/dev/null; [ \$? -eq 2 ] &&
    { qie-init --out '$T_TMP/x' --variant edit-3000 --log_level quiet 2>/dev/null; [ \$? -eq 2 ]; }"

# the C loaders, through the stages that use them, on one decoded demo sample
make_demo_data --out "$T_TMP/data" --n 3 > /dev/null 2>&1
decode() { # mode -> records on stdout
    qie-decode --train_data_meta "$T_TMP/data/metadata.json" --train_data_dir "$T_TMP/data" --train_mode "$1" \
        --image_sample_size 128 --enable_bucket --vae_image_area 16384 --condition_image_area 16384 \
        --log_level quiet --out - 2>/dev/null
}
encode_train() { # model mode: vae_load, qwenvl_create, dit_create_from_dir all accept it
    local m=$1 mode=$2 c=$T_TMP/cache.$RANDOM
    set -o pipefail
    decode "$mode" | timeout $T qie-encode-vae --model "$m" --log_level warn |
        timeout $T qie-encode-text --model "$m" --train_mode "$mode" --text_drop_ratio 0.1 --log_level warn |
        qie-cache put "$c" --in - --progress=false --log_level warn || return 1
    [ "$(qie-cache ls "$c" --complete --ids_only | wc -l)" -eq 3 ] || return 1
    timeout $T qie-train --pretrained_model_name_or_path "$m" --in "lmdb://$c" --output_dir "$c.out" \
        --train_mode "$mode" --max_train_steps 2 --seed 3 --report_to none --progress=false --log_level warn
}
check "C loaders: encode-vae, encode-text and train load the tiny model (plus)" encode_train "$M" qwen_image_edit_plus
# the variants differ only in model_index.json (and zero_cond_t for 2511): the weights are the same
# draws, so the loaders' check above covers them (v1 sources are ~1 MP: too slow for the CPU VAE here)
check "edit (v1): QwenImageEditPipeline, same transformer weights" bash -c "qie-init --out '$T_TMP/v1' --log_level quiet &&
    grep -q '\"QwenImageEditPipeline\"' '$T_TMP/v1/model_index.json' &&
    cmp -s '$T_TMP/v1/transformer/diffusion_pytorch_model.safetensors' '$M/transformer/diffusion_pytorch_model.safetensors'"

sharded() {
    qie-init --out "$T_TMP/sh" --max_shard_size 100KB --log_level quiet || return 1
    [ -f "$T_TMP/sh/transformer/diffusion_pytorch_model.safetensors.index.json" ] &&
        [ -f "$T_TMP/sh/text_encoder/model.safetensors.index.json" ] &&
        ls "$T_TMP/sh"/transformer/diffusion_pytorch_model-00001-of-0000*.safetensors > /dev/null || return 1
    # the same tensors as the one-file model: the draws do not depend on sharding
    encode_train "$T_TMP/sh" qwen_image_edit_plus
}
check "--max_shard_size: sharded transformer and text encoder (+ index) load too" sharded

from_file() {
    printf '{"base": "tiny", "variant": "edit-2511", "transformer": {"num_layers": 3},
             "vae": {"num_res_blocks": 2}, "text_encoder": {"num_hidden_layers": 1, "vision_config": {"depth": 2,
             "fullatt_block_indexes": [1]}}}' > "$T_TMP/cfg.json"
    qie-init --out "$T_TMP/cf" --config "$T_TMP/cfg.json" --log_level quiet || return 1
    grep -q '"num_layers": 3' "$T_TMP/cf/transformer/config.json" && grep -q '"zero_cond_t": true' "$T_TMP/cf/transformer/config.json" &&
        grep -q '"num_res_blocks": 2' "$T_TMP/cf/vae/config.json" && encode_train "$T_TMP/cf" qwen_image_edit_plus
}
check "a config file (3 blocks, 2511, bigger VAE, 1-layer LLM) writes a loadable model" from_file
check "a config file with inconsistent sizes is refused" bash -c "
    echo '{\"transformer\": {\"joint_attention_dim\": 32}}' > '$T_TMP/bad.json' &&
    ! qie-init --out '$T_TMP/bad' --config '$T_TMP/bad.json' --log_level quiet 2>/dev/null"
finish
