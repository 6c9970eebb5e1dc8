#!/usr/bin/env bash
# t_backpressure: a stopped consumer (SIGSTOP) stops its producers instead of growing their memory.
# Two set-ups, each with real processes over tcp:
#   1. big records (2 MB): gen_records -> qie-cat (a middle stage) -> a consumer that is stopped;
#      unbounded queues would pile up 400 MB upstream in the 3 s the consumer sleeps;
#   2. the online pipeline: 2 decoders -> qie-encode-vae | qie-encode-text -> qie-train reading
#      records over tcp (no cache), with the trainer stopped.
# Upstream RSS (/proc/PID/status VmRSS, and VmHWM for the peak) is sampled every 0.2 s while the
# consumer is stopped; the growth over the stop and the peak must stay small; after SIGCONT
# everything arrives.
source "$(dirname "$0")/shlib.sh"
# under ASan, freed buffers sit in its quarantine (256 MB by default) and would look like growth
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4"
port=$(test_ports 4)
T=120
here=$(cd "$(dirname "$0")/.." && pwd)

# child PID [NAME]: the (first) child of PID, of that command name when given (from /proc)
child() {
    local f p comm ppid
    for _ in $(seq 50); do
        for f in /proc/[0-9]*/stat; do
            read -r p comm _ ppid _ 2>/dev/null < "$f" || continue
            [ "$ppid" = "$1" ] && { [ -z "${2:-}" ] || [ "$comm" = "($2)" ]; } && { echo "$p"; return 0; }
        done
        sleep 0.1
    done
    return 1
}
# descendant PID NAME: a process of that command name below PID (any depth: pipelines fork subshells)
descendant() {
    local f p comm ppid q
    for _ in $(seq 50); do
        for f in /proc/[0-9]*/stat; do
            read -r p comm _ ppid _ 2>/dev/null < "$f" || continue
            [ "$comm" = "($2)" ] || continue
            q=$ppid
            while [ -n "$q" ] && [ "$q" -gt 1 ]; do
                [ "$q" = "$1" ] && { echo "$p"; return 0; }
                q=$(awk '{print $4}' "/proc/$q/stat" 2>/dev/null)
            done
        done
        sleep 0.1
    done
    return 1
}
rss_kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status" 2>/dev/null || echo 0; }
# watch SECONDS PID...: samples VmRSS; prints "pid first last max hwm" per pid (kB) into $T_TMP/watch
watch_rss() {
    local secs=$1; shift
    declare -A first last max
    local p r n=$((secs * 5))
    for ((k = 0; k < n; k++)); do
        for p in "$@"; do
            r=$(rss_kb "$p" VmRSS)
            [ -z "${first[$p]:-}" ] && first[$p]=$r
            last[$p]=$r
            [ "$r" -gt "${max[$p]:-0}" ] && max[$p]=$r
        done
        sleep 0.2
    done
    : > "$T_TMP/watch"
    for p in "$@"; do
        echo "$p ${first[$p]} ${last[$p]} ${max[$p]} $(rss_kb "$p" VmHWM) $(cat "/proc/$p/comm" 2>/dev/null)" >> "$T_TMP/watch"
    done
}
# bounded GROWTH_KB PEAK_KB: every watched pid grew less than GROWTH over the stop, and its peak
# (VmHWM, startup included) stayed within PEAK of its size when the stop began
bounded() {
    local ok=0 p f l m h
    while read -r p f l m h c; do
        echo "   $c (pid $p): VmRSS $((f / 1024)) -> $((l / 1024)) MB, max $((m / 1024)) MB, VmHWM $((h / 1024)) MB"
        [ $((m - f)) -lt "$1" ] && [ $((h - f)) -lt "$2" ] || ok=1
    done < "$T_TMP/watch"
    return $ok
}

big_records() {
    local a="tcp://127.0.0.1:$port" b="tcp://127.0.0.1:$((port + 1))"
    timeout $T qie-cat --in "$b" --out "$T_TMP/big.qie" & local cons=$!
    timeout $T qie-cat --in "$a" --out "$b" & local mid=$!
    timeout $T gen_records --n 200 --bytes 2000000 --out "$a" & local prod=$!
    sleep 0.5
    local c m g; c=$(child $cons) m=$(child $mid) g=$(child $prod)
    kill -STOP "$c"
    watch_rss 3 "$m" "$g"
    kill -CONT "$c"
    wait $prod && wait $mid && wait $cons || return 1
    echo "-- 2 MB records, consumer stopped 3 s:"
    # credit 4 per connection: a few records in flight, not the 400 MB the stop would queue
    bounded $((40 * 1024)) $((80 * 1024)) || return 1
    [ "$(qie-cat --in "$T_TMP/big.qie" --print | wc -l)" -eq 200 ]
}
check "big records: a stopped consumer bounds upstream memory, then everything arrives" big_records

online() {
    qie-init --out "$T_TMP/model" --variant edit-2509 --log_level quiet 2>/dev/null || return 1
    make_demo_data --out "$T_TMP/data" --n 24 > /dev/null 2>&1 || return 1
    local in="tcp://127.0.0.1:$((port + 2))" mid="tcp://127.0.0.1:$((port + 3))"
    timeout $T qie-train --pretrained_model_name_or_path "$T_TMP/model" --in "$mid" --output_dir "$T_TMP/out" \
        --train_mode qwen_image_edit_plus --max_train_steps 2 --seed 1 --report_to none --progress=false \
        --log_level warn 2> "$T_TMP/train.err" & local tr=$!
    timeout $T bash "$here/pipelines/cache.sh" --only encode --pretrained_model_name_or_path "$T_TMP/model" \
        --train_mode qwen_image_edit_plus --in "$in?peers=2" --out "$mid" --window 4 --log_level warn \
        2> "$T_TMP/enc.err" & local enc=$!
    for i in 0 1; do
        timeout $T qie-decode --train_data_meta "$T_TMP/data/metadata.json" --train_data_dir "$T_TMP/data" \
            --train_mode qwen_image_edit_plus --image_sample_size 128 --enable_bucket --vae_image_area 16384 \
            --condition_image_area 16384 --shard $i/2 --log_level quiet --out "$in" 2>/dev/null &
        eval "dec$i=\$!"
    done
    local t; t=$(child $tr) || return 1
    kill -STOP "$t"
    sleep 1   # let the upstream fill what the credits allow
    local vae txt; vae=$(descendant $enc qie-encode-vae) && txt=$(descendant $enc qie-encode-text) || return 1
    watch_rss 3 "$(child $dec0)" "$(child $dec1)" "$vae" "$txt"
    kill -CONT "$t"
    wait "$dec0" && wait "$dec1" && wait $enc && wait $tr || { echo "exit codes"; tail -3 "$T_TMP/train.err" "$T_TMP/enc.err"; return 1; }
    echo "-- online pipeline, trainer stopped 3 s:"
    bounded $((16 * 1024)) $((64 * 1024)) && [ -f "$T_TMP/out/transformer/config.json" ] || { tail -3 "$T_TMP/train.err" "$T_TMP/enc.err"; return 1; }
}
check "online: decoders -> encoders -> qie-train over tcp; a stopped trainer bounds upstream memory" online
finish
