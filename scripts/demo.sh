#!/usr/bin/env bash
# scripts/demo.sh [DIR]: the whole job on its embedded default, on CPU, in a few minutes:
#   1. qie-init: a tiny random Qwen-Image-Edit-2509 model in the diffusers layout (no download);
#   2. scripts/make-demo-data: generated edit pairs in VideoX-Fun's metadata format (one
#      multi-source entry, one broken entry);
#   3. the caching pipeline, ONE shell pipeline of stages:
#        qie-decode | qie-encode-vae | qie-encode-text | qie-cache put
#      (small image sizes: the tiny VAE on CPU at 1024² costs ~30 s per image);
#   4. a trainer-only run on the cache: some steps with progress and a checkpoint, a stop, a resume
#      from `latest`, the final weights; the loss falls.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${QIE_BIN:-$here/build/bin}
export PATH="$bin:$PATH"
work=${1:-$here/build/demo}
steps=${DEMO_STEPS:-40}
rm -rf "$work"; mkdir -p "$work"
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

stamp "qie-init: tiny model -> $work/model"
qie-init --out "$work/model" --variant edit-2509 --seed 0 --log_level warn

stamp "demo dataset -> $work/data"
QIE_BIN=$bin bash "$here/scripts/make-demo-data" "$work/data" 24

stamp "caching pipeline: qie-decode | qie-encode-vae | qie-encode-text | qie-cache put"
sizes=(--train_mode qwen_image_edit_plus --image_sample_size 128 --enable_bucket
       --vae_image_area 16384 --condition_image_area 16384)
set -o pipefail
qie-decode --train_data_meta "$work/data/metadata.json" --train_data_dir "$work/data" "${sizes[@]}" \
        --rejects "$work/rejects.jsonl" --jobs 2 --log_level warn --out - |
    qie-encode-vae --model "$work/model" --log_level warn |
    qie-encode-text --model "$work/model" --train_mode qwen_image_edit_plus --text_drop_ratio 0.1 --log_level warn |
    qie-cache put "$work/cache" --in - --setting text_drop_ratio=0.1
echo "rejected entries (the demo has one broken entry on purpose):"
cat "$work/rejects.jsonl"
qie-cache stats "$work/cache" | sed -n '1,4p'
qie-cache verify "$work/cache"

echo "a re-run skips everything already cached (qie-decode --skip_ids: nothing is even decoded):"
qie-cache ls "$work/cache" --ids_only > "$work/cached.ids"
qie-decode --train_data_meta "$work/data/metadata.json" --train_data_dir "$work/data" "${sizes[@]}" \
        --skip_ids "$work/cached.ids" --log_level warn --out - |
    qie-cache put "$work/cache" --in - --progress=false --log_level warn

train=(qie-train --pretrained_model_name_or_path "$work/model" --in "lmdb://$work/cache?expect=text_drop_ratio=0.1"
       --output_dir "$work/out" --train_mode qwen_image_edit_plus --max_train_steps "$steps" --learning_rate 1e-3
       --lr_scheduler constant --checkpointing_steps 10 --checkpoints_total_limit 2 --seed 42 --log_level warn)
stamp "trainer-only run on the cache: $((steps / 2)) of $steps steps, then it stops (--stop_after_steps)"
"${train[@]}" --stop_after_steps $((steps / 2))
ls "$work/out"
stamp "resume from latest to step $steps"
"${train[@]}" --resume_from_checkpoint latest

python_loss() { # first and last loss of metrics.jsonl, without Python
    sed -n 's/.*"step": *\([0-9]*\).*"loss": *\([-0-9.e+]*\).*/\1 \2/p' "$work/out/logs/metrics.jsonl"
}
python_loss > "$work/loss.txt"
first=$(head -5 "$work/loss.txt" | awk '{s += $2} END {printf "%.4f", s / NR}')
last=$(tail -5 "$work/loss.txt" | awk '{s += $2} END {printf "%.4f", s / NR}')
stamp "done: loss (mean of 5 steps) $first at the start -> $last at the end; final weights:"
ls -la "$work/out/transformer"
awk -v a="$first" -v b="$last" 'BEGIN { if (b >= a) { print "demo: the loss did not fall"; exit 1 } }'
echo "demo: done ($work)"
