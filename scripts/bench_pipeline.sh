#!/usr/bin/env bash
# scripts/bench_pipeline.sh [BUILD]: samples/s of the caching pipeline on this machine's cores,
# stage by stage, and the stage that limits the whole pipeline (make bench-pipeline).
#
# Each stage runs alone from a file of its input records to a file (so it gets every core), then
# the whole shell pipeline runs once (qie-decode | qie-encode-vae | qie-encode-text | qie-cache
# put), where the stages share the cores. Environment:
#   BENCH_N       demo samples (default 48)
#   BENCH_MODEL   a model folder (default: a qie-init tiny model; give a real one for real numbers)
#   BENCH_DEVICE  cpu | cuda (default cpu)
#   BENCH_SIZE    --image_sample_size, and the source areas are its square (default 128)
#   BENCH_DIR     scratch folder (default BUILD/bench-pipeline)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
export PATH="$here/$build/bin:$PATH"
n=${BENCH_N:-48}
dev=${BENCH_DEVICE:-cpu}
S=${BENCH_SIZE:-128}
work=${BENCH_DIR:-$here/$build/bench-pipeline}
rm -rf "$work"; mkdir -p "$work"
model=${BENCH_MODEL:-$work/model}
[ -n "${BENCH_MODEL:-}" ] || qie-init --out "$model" --variant edit-2509 --log_level quiet
make_demo_data --out "$work/data" --n "$n" > /dev/null 2>&1
cores=$(nproc)
sizes=(--train_mode qwen_image_edit_plus --image_sample_size "$S" --enable_bucket
       --vae_image_area $((S * S)) --condition_image_area $((S * S)))

now() { date +%s.%N; }
declare -A rate
run() { # name command...: runs it, records samples/s
    local name=$1; shift
    local t0 t1; t0=$(now)
    "$@"
    t1=$(now)
    rate[$name]=$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", n / (b - a) }')
}
dec() { qie-decode --train_data_meta "$work/data/metadata.json" --train_data_dir "$work/data" "${sizes[@]}" \
            --jobs "$cores" --log_level quiet "$@" 2>/dev/null; }
run "qie-decode (-j $cores)" dec --out "$work/dec.qie"
run "qie-encode-vae" qie-encode-vae --model "$model" --device "$dev" --log_level quiet --in "$work/dec.qie" --out "$work/vae.qie"
run "qie-encode-text" qie-encode-text --model "$model" --device "$dev" --train_mode qwen_image_edit_plus \
    --text_drop_ratio 0.1 --log_level quiet --in "$work/vae.qie" --out "$work/txt.qie"
run "qie-cache put" qie-cache put "$work/cache1" --in "$work/txt.qie" --progress=false --log_level quiet
pipeline() {
    set -o pipefail
    dec --out - | qie-encode-vae --model "$model" --device "$dev" --log_level quiet |
        qie-encode-text --model "$model" --device "$dev" --train_mode qwen_image_edit_plus --text_drop_ratio 0.1 \
            --log_level quiet | qie-cache put "$work/cache2" --in - --progress=false --log_level quiet
}
run "whole pipeline" pipeline

echo "caching pipeline, $n samples (S=$S, sources ${S}², model $( [ -n "${BENCH_MODEL:-}" ] && echo "$model" || echo "qie-init tiny"), $dev), $cores cores:"
printf '| %-22s | %10s |\n' stage samples/s
printf '|%s|%s|\n' "------------------------" "------------"
slow= slowr=
for s in "qie-decode (-j $cores)" qie-encode-vae qie-encode-text "qie-cache put"; do
    printf '| %-22s | %10s |\n' "$s" "${rate[$s]}"
    if [ -z "$slow" ] || awk -v a="${rate[$s]}" -v b="$slowr" 'BEGIN { exit !(a < b) }'; then slow=$s slowr=${rate[$s]}; fi
done
printf '| %-22s | %10s |\n' "whole pipeline" "${rate[whole pipeline]}"
echo "bottleneck: $slow ($slowr samples/s alone; the pipeline ran at ${rate[whole pipeline]} samples/s)"
