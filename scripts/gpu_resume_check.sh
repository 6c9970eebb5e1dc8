#!/usr/bin/env bash
# scripts/gpu_resume_check.sh BIN: qie-train's default one-GPU path (--param_residency block, bf16
# gradients) through checkpoints on a GPU host: 6 steps straight vs 3 steps, stop, resume from
# `latest`, 3 more; the two final transformers must be the same bytes (the CUDA kernels are
# deterministic). Then the same for --param_residency full, a cross resume (a full-residency
# checkpoint continued in block residency with f32 gradients: the same bits, since both compute
# from bf16(master)), and with diffusers importable (PYTHONPATH) from_pretrained on the result.
# Prints "ok"/"FAIL" lines and the number of failures.
set -u
b=$1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
W=$(mktemp -d)
# shellcheck source=scripts/dit_config.sh
. "$(dirname "$0")/dit_config.sh"
dit_config "$W/m" 2 4
fails=0
check() { if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi; }
run() { # out_dir, extra flags...
  local o=$1; shift
  "$b/qie-train" --pretrained_model_name_or_path "$W/m" --init_weights random \
    --in "synthetic://512x512?count=16&sources=1&txt=64" --seed 3 --train_batch_size 1 --max_train_steps 6 \
    --learning_rate 1e-4 --gradient_checkpointing --checkpointing_steps 3 --device cuda --progress=false \
    --log_level warn --output_dir "$o" "$@" > "$o.log" 2>&1
}
same() { cmp -s "$1/transformer/diffusion_pytorch_model.safetensors" "$2/transformer/diffusion_pytorch_model.safetensors"; }
for res in block full; do
  check "$res: 6 steps" run "$W/$res-a" --param_residency $res
  check "$res: 3 steps then stop" run "$W/$res-b" --param_residency $res --stop_after_steps 3
  check "$res: resume latest" run "$W/$res-b" --param_residency $res --resume_from_checkpoint latest
  check "$res: resumed run = straight run, byte for byte" same "$W/$res-a" "$W/$res-b"
done
check "full checkpoint-3 continued with block residency, f32 gradients" run "$W/x" --param_residency block \
  --gradient_dtype fp32 --resume_from_checkpoint "$W/full-b/checkpoint-3"
check "  = the full run's weights" same "$W/full-a" "$W/x"
grep -h "peak" "$W"/block-a.log "$W"/full-a.log 2>/dev/null | sed 's/^/    /'
if python3 -c "import diffusers" 2>/dev/null; then
  check "diffusers from_pretrained loads the block run's transformer" python3 -c "
import sys, torch
from diffusers import QwenImageTransformer2DModel
m = QwenImageTransformer2DModel.from_pretrained(sys.argv[1])
n = sum(p.numel() for p in m.parameters())
assert n > 0 and all(torch.isfinite(p).all() for p in m.parameters())
print('    %d parameters' % n)" "$W/block-a/transformer"
fi
rm -rf "$W"
echo "$fails failed"
