#!/usr/bin/env bash
# scripts/demo.sh [DIR]: the main job on its embedded default, on CPU: a generated demo dataset
# -> the caching pipeline (one shell pipeline of stages) -> an LMDB cache -> its report.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${QIE_BIN:-$here/build/bin}
export PATH="$bin:$PATH"
work=${1:-$here/build/demo}
rm -rf "$work"; mkdir -p "$work"
echo "== demo dataset -> $work/data"
make_demo_data --out "$work/data" --n 24
echo "== caching pipeline: qie-decode | qie-cache put"
set -o pipefail
qie-decode --train_data_meta "$work/data/metadata.json" --train_data_dir "$work/data" \
    --train_mode qwen_image_edit_plus --image_sample_size 128 --enable_bucket \
    --rejects "$work/rejects.jsonl" --jobs 2 --out - |
  qie-cache put "$work/cache" --in -
echo "== rejected entries (the demo has one broken entry on purpose)"
cat "$work/rejects.jsonl"
echo "== the cache"
qie-cache stats "$work/cache"
qie-cache verify "$work/cache"
echo "== a re-run skips everything already cached"
qie-decode --train_data_meta "$work/data/metadata.json" --train_data_dir "$work/data" \
    --train_mode qwen_image_edit_plus --image_sample_size 128 --enable_bucket --jobs 2 --log_level warn --out - |
  qie-cache put "$work/cache" --in - --progress=false
echo "demo: done ($work)"
