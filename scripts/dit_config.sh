# scripts/dit_config.sh: sourced by the GPU scripts. dit_config DIR LAYERS [HEADS] writes a
# Qwen-Image-Edit transformer config.json into DIR (the real per-layer dimensions with 24 heads;
# fewer heads make a narrow model for quick checks).
dit_config() {
    mkdir -p "$1"
    cat >"$1/config.json" <<EOF
{"_class_name": "QwenImageTransformer2DModel", "patch_size": 2, "in_channels": 64, "out_channels": 16,
 "num_layers": $2, "attention_head_dim": 128, "num_attention_heads": ${3:-24}, "joint_attention_dim": 3584,
 "guidance_embeds": false, "axes_dims_rope": [16, 56, 56]}
EOF
}
