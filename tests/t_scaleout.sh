#!/usr/bin/env bash
# t_scaleout: pipelines/scale-out.sh over tcp on localhost with real processes: 3 decoders -> an
# encoder chain (qie-encode-vae | qie-encode-text, ?rejoin=1) -> one cache writer. A decoder, then
# an encoder, then the cache writer is SIGKILLed half-way; each run must end with a cache that
# holds every good sample exactly once (the ids of a one-process decode, qie-cache verify), the
# broken entry in the reject report, and a trainer-only run must consume the cache.
source "$(dirname "$0")/shlib.sh"
port=$(test_ports 400)
T=120
here=$(cd "$(dirname "$0")/.." && pwd)
export QIE_BIN

qie-init --out "$T_TMP/model" --variant edit-2509 --log_level warn 2>/dev/null || exit 1
# under ASan the CPU encoders are ~20x slower: fewer samples keep the suite's time reasonable
n_pairs=30
ldd "$QIE_BIN/qie-encode-vae" 2>/dev/null | grep -q libasan && n_pairs=12
make_demo_data --out "$T_TMP/data" --n $n_pairs > /dev/null 2>&1 || exit 1
flags=(--pretrained_model_name_or_path "$T_TMP/model" --train_data_dir "$T_TMP/data"
       --train_data_meta "$T_TMP/data/metadata.json" --train_mode qwen_image_edit_plus --image_sample_size 128
       --enable_bucket --vae_image_area 16384 --condition_image_area 16384 --log_level warn
       --cache_batch 2 --window 4)   # small commits and windows: "half-way" is visible in the cache

# the ids every run must end with: one decoder process, same settings
qie-decode --train_data_meta "$T_TMP/data/metadata.json" --train_data_dir "$T_TMP/data" \
    --train_mode qwen_image_edit_plus --image_sample_size 128 --enable_bucket --vae_image_area 16384 \
    --condition_image_area 16384 --log_level quiet --out "$T_TMP/all.qie" 2>/dev/null
qie-cat --in "$T_TMP/all.qie" --print | cut -d' ' -f1 | sort > "$T_TMP/expected.ids"
n_expected=$(wc -l < "$T_TMP/expected.ids")

count() { qie-cache ls "$1" --ids_only 2>/dev/null | wc -l; }
pid_in_group() { # PGID NAME: the process of that name in the process group (from /proc)
    local f
    for f in /proc/[0-9]*/stat; do
        read -r pid comm _ _ pgrp _ < "$f" 2>/dev/null || continue
        [ "$pgrp" = "$1" ] && [ "$comm" = "($2)" ] && { echo "$pid"; return 0; }
    done
    return 1
}

# run NAME VICTIM: scale-out in the background; once a third of the samples are cached, SIGKILL
# the victim (decoder | encoder | writer); then wait for the run
run() {
    local name=$1 victim=$2 w="$T_TMP/$1" p
    timeout $T bash "$here/pipelines/scale-out.sh" local --decoders 3 --cache "$w/cache" --work "$w/run" \
        --port $((port + ${#name} * 10)) "${flags[@]}" 2> "$w.err" &
    local job=$!
    for _ in $(seq 600); do [ "$(count "$w/cache")" -ge $((n_expected / 3)) ] && break; sleep 0.05; done
    echo "$(count "$w/cache")" > "$w.at_kill"
    case $victim in
        decoder) p=$(cat "$w/run/pids/decode.1") ;;
        encoder) p=$(pid_in_group "$(cat "$w/run/pids/encode.0")" qie-encode-vae) ;;
        writer) p=$(cat "$w/run/pids/cache") ;;
    esac
    [ -n "$p" ] && kill -KILL "$p"
    wait $job
}

exactly_once() { # cache dir: every expected id, nothing else, verify clean
    qie-cache verify "$1" > /dev/null 2>&1 &&
        cmp -s <(qie-cache ls "$1" --ids_only | sort) "$T_TMP/expected.ids" &&
        [ "$(qie-cache stats "$1" | sed -n 's/^records: //p')" -eq "$n_expected" ]
}
broken_reported() { grep -q 'broken.jpg' "$1/run/rejects.jsonl"; }

mkdir -p "$T_TMP/kd" "$T_TMP/ke" "$T_TMP/kw"
check "decoder SIGKILLed half-way: the run ends well" run kd decoder
check "decoder SIGKILLed: every good sample cached exactly once, verify clean" exactly_once "$T_TMP/kd/cache"
restarted() { # the killed decoder was restarted with the cache's ids and a later start finished
    grep -q 'decoder 1/3 exited 137 (start 1); restarting' "$1" &&
        sed -n '/decoder 1\/3 exited 137/,$p' "$1" | grep -q 'decoder 1/3 done (start [0-9]*, [1-9][0-9]* ids already cached)'
}
check "decoder SIGKILLed: it was restarted with the cache's ids" restarted "$T_TMP/kd/run/report.txt"
check "decoder SIGKILLed: the encoders' reader logged the dead producer" \
    grep -q 'a producer .*delivered [0-9]* record' "$T_TMP/kd/run/logs/encode.0.log"
check "the broken entry is in the reject report" broken_reported "$T_TMP/kd"
echo "-- decoder kill (cached at the kill: $(cat "$T_TMP/kd.at_kill") of $n_expected):"
sed 's/^/   /' "$T_TMP/kd/run/report.txt"
grep -ho 'a producer .*record(s)' "$T_TMP/kd/run/logs/encode.0.log" | sed 's/^/   /'

check "encoder SIGKILLed half-way: a second pass finishes the cache" run ke encoder
check "encoder SIGKILLed: every good sample cached exactly once, verify clean" exactly_once "$T_TMP/ke/cache"
check "encoder SIGKILLed: pass 1 failed, pass 2 re-sent only what was missing" \
    grep -q 'pass 2: clean' "$T_TMP/ke/run/report.txt"
echo "-- encoder kill (cached at the kill: $(cat "$T_TMP/ke.at_kill") of $n_expected):"
sed 's/^/   /' "$T_TMP/ke/run/report.txt"

check "cache writer SIGKILLed half-way: a restarted writer resumes the cache" run kw writer
check "cache writer SIGKILLed: every good sample cached exactly once, verify clean" exactly_once "$T_TMP/kw/cache"
echo "-- writer kill (cached at the kill: $(cat "$T_TMP/kw.at_kill") of $n_expected):"
sed 's/^/   /' "$T_TMP/kw/run/report.txt"

train_on_cache() {
    timeout $T qie-train --pretrained_model_name_or_path "$T_TMP/model" --in "lmdb://$T_TMP/kd/cache" \
        --output_dir "$T_TMP/train" --train_mode qwen_image_edit_plus --max_train_steps 3 --seed 1 \
        --checkpointing_steps 0 --report_to none --progress=false --log_level warn 2> "$T_TMP/train.err" &&
        [ -f "$T_TMP/train/transformer/config.json" ] && grep -q '"step": *3' "$T_TMP/train/logs/metrics.jsonl"
}
check "a trainer-only run consumes the scaled-out cache" train_on_cache
finish
