#!/usr/bin/env bash
# pipelines/scale-out.sh: the caching pipeline spread over hosts, with nothing lost and nothing
# twice (docs/pipelines.md "Scale-out"). Decoders run on CPU hosts, each on its shard; encoders
# and the one cache writer run on the GPU host:
#
#   CPU host i:  qie-decode --shard i/N ... --out tcp://GPU:PORT                  (N of them)
#   GPU host:    qie-encode-vae --in 'tcp://0.0.0.0:PORT?peers=N&rejoin=1' | qie-encode-text
#                  --out tcp://127.0.0.1:CPORT                                   (one chain per GPU)
#                qie-cache put CACHE --in 'tcp://127.0.0.1:CPORT?peers=E&rejoin=1'
#
# Why nothing is lost or duplicated (data_pipeline.md §5.4, with the cache as the done-set):
#   * ids are stable (docs/decode.md "Ids") and the cache skips ids it holds, so a record that
#     arrives twice is stored once;
#   * a decoder that dies is restarted by its supervisor here with --skip_ids = the cache's ids:
#     it re-sends only what is not committed yet; the encoders' ?rejoin=1 reader logs the dead
#     decoder (with what it delivered) and counts the restarted one as a new peer;
#   * anything else that fails a pass (an encoder, the cache writer) ends the pass; the next pass
#     re-runs the decoders with --skip_ids, so it sends exactly what the cache lacks. Passes repeat
#     until one ends cleanly (--passes, default 5);
#   * back-pressure is by credit (docs/record.md): a stopped consumer stops its producers, whose
#     memory stays bounded.
#
# Modes:
#   scale-out.sh local  --decoders N [--encoders E] --cache DIR --work DIR [--port P] FLAGS...
#       everything on this machine over tcp://127.0.0.1 (tests, a single big host)
#   scale-out.sh gpu    --decoders N [--encoders E] --cache DIR --work DIR [--port P] FLAGS...
#       the GPU host's half (one pass; run it again to recover)
#   scale-out.sh decode --shard i/N --to tcp://GPU:PORT --ids_cmd 'ssh GPU qie-cache ls CACHE --ids_only'
#       --work DIR FLAGS...   one CPU host's decoder, restarted on failure with the cache's ids
# FLAGS are pipelines/cache.sh's (the reference's flag list plus qie's); per-GPU devices are
# cuda:0 .. cuda:E-1 when --device cuda is given.
# Run files under --work: pids/<role> (the test kills through them), logs/<role>.log,
# rejects.<i>.jsonl, report.txt (the summary of every pass).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="${QIE_BIN:-$here/build/bin}:$PATH"
cache_sh="$here/pipelines/cache.sh"

mode=${1:-}; shift || true
decoders=1 encoders=1 cache= work= port=5555 shard= to= ids_cmd= passes=5 restarts=5 device=cpu
flags=()
while [ $# -gt 0 ]; do
    case $1 in
        --decoders) decoders=$2; shift 2 ;;
        --encoders) encoders=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --shard) shard=$2; shift 2 ;;
        --to) to=$2; shift 2 ;;
        --ids_cmd) ids_cmd=$2; shift 2 ;;
        --passes) passes=$2; shift 2 ;;
        --restarts) restarts=$2; shift 2 ;;
        --device) device=$2; shift 2 ;;
        *) flags+=("$1"); shift ;;
    esac
done
[ -n "$work" ] || { echo "scale-out.sh: --work DIR is required" >&2; exit 2; }
mkdir -p "$work/pids" "$work/logs"
note() { echo "scale-out: $*" | tee -a "$work/report.txt" >&2; }

# One decoder, restarted when it fails (SIGKILL included) until it ends cleanly. Each start reads
# the ids already committed, so a restart re-sends only what is missing. The decoder runs in its
# own process group (setsid), whose id is in pids/decode.<i>.
supervise_decoder() { # i n to ids_cmd
    local i=$1 n=$2 url=$3 cmd=$4 try=0 rc
    while :; do
        eval "$cmd" > "$work/skip.$i.txt" 2>/dev/null || : > "$work/skip.$i.txt"
        setsid "$cache_sh" --only decode "${flags[@]}" --shard "$i/$n" --skip_ids "$work/skip.$i.txt" \
            --rejects "$work/rejects.$i.jsonl.$try" --out "$url" --progress=false \
            >> "$work/logs/decode.$i.log" 2>&1 &
        echo $! > "$work/pids/decode.$i"
        rc=0; wait $! || rc=$?
        local summary; summary=$(grep 'qie-decode: ' "$work/logs/decode.$i.log" | tail -1 || :)
        if [ $rc -eq 0 ]; then
            note "decoder $i/$n done (start $((try + 1)), $(wc -l < "$work/skip.$i.txt") ids already cached): ${summary#qie-decode: }"
            return 0
        fi
        try=$((try + 1))
        local why; why=$(grep -v 'reject entry' "$work/logs/decode.$i.log" | grep -E 'error|ERROR' | tail -1 || :)
        note "decoder $i/$n exited $rc (start $try)${why:+: $why}; restarting with the cache's ids"
        if [ $try -gt "$restarts" ]; then
            # give up: end the pass (the writer would wait for this decoder's end forever)
            if [ -f "$work/pids/cache" ]; then kill "$(cat "$work/pids/cache")" 2>/dev/null || :; fi
            return 1
        fi
        sleep 0.2
    done
}

# The GPU host's half of one pass: E encoder chains (each reading its decoders over tcp, with
# ?rejoin=1; each in its own process group) into one cache writer. Non-zero when any failed.
gpu_side() { # pass
    local pass=$1 e peers cport=$((port + 100)) pids=() rc=0
    for ((e = 0; e < encoders; e++)); do
        peers=0
        for ((i = e; i < decoders; i += encoders)); do peers=$((peers + 1)); done
        local dev=$device
        [ "$device" = cuda ] && dev=cuda:$e
        setsid "$cache_sh" --only encode "${flags[@]}" --device "$dev" --progress=false \
            --in "tcp://0.0.0.0:$((port + e))?peers=$peers&rejoin=1" --out "tcp://127.0.0.1:$cport" \
            >> "$work/logs/encode.$e.log" 2>&1 &
        pids+=($!)
        echo $! > "$work/pids/encode.$e"
    done
    qie-cache put "$cache" --in "tcp://127.0.0.1:$cport?peers=$encoders&rejoin=1" --progress=false \
        $(cache_flags) >> "$work/logs/cache.log" 2>&1 &
    local cpid=$!
    echo $cpid > "$work/pids/cache"
    wait $cpid || rc=$?
    # the writer is done (or dead): encoder chains still running have nowhere to go
    for p in "${pids[@]}"; do
        if [ $rc -ne 0 ]; then kill -TERM -- "-$p" 2>/dev/null || :; fi
        wait "$p" || rc=$((rc ? rc : 1))
    done
    note "pass $pass: cache writer exited $rc: $(grep -o '[0-9]* read, .*commits' "$work/logs/cache.log" | tail -1)"
    return $rc
}

# the cache flags of the flag list (--cache_batch, --text_drop_ratio), as qie-cache put wants them
cache_flags() {
    local drop=0.1 batch=64 a
    for ((k = 0; k < ${#flags[@]}; k++)); do
        a=${flags[$k]}
        case $a in
            --text_drop_ratio=*) drop=${a#*=} ;; --text_drop_ratio) drop=${flags[$((k + 1))]} ;;
            --cache_batch=*) batch=${a#*=} ;; --cache_batch) batch=${flags[$((k + 1))]} ;;
        esac
    done
    echo "--batch $batch --setting text_drop_ratio=$drop"
}

report() {
    local n; n=$(qie-cache stats "$cache" 2>/dev/null | sed -n 's/^records: //p')
    cat "$work"/rejects.*.jsonl.* 2>/dev/null | sort -u > "$work/rejects.jsonl" || :
    note "cache $cache: ${n:-0} records; $(wc -l < "$work/rejects.jsonl") rejected entries (see $work/rejects.jsonl)"
}

case $mode in
    local|gpu)
        [ -n "$cache" ] || { echo "scale-out.sh: --cache DIR is required" >&2; exit 2; }
        for ((pass = 1; pass <= passes; pass++)); do
            note "pass $pass: $decoders decoder(s) -> $encoders encoder chain(s) -> $cache"
            gpu_side "$pass" &
            gpid=$!
            echo $gpid > "$work/pids/gpu"
            dpids=()
            if [ "$mode" = local ]; then
                for ((i = 0; i < decoders; i++)); do
                    supervise_decoder "$i" "$decoders" "tcp://127.0.0.1:$((port + i % encoders))" \
                        "qie-cache ls '$cache' --ids_only" &
                    dpids+=($!)
                done
            fi
            grc=0; wait $gpid || grc=$?
            drc=0
            # A decoder still running after the writer ended (a restart whose shard another start
            # had already ended; or the pass failed) has nowhere to send: tear it down. The pass is
            # clean only if every decoder ended cleanly; otherwise the next pass sends what is missing.
            if [ $grc -eq 0 ]; then # let decoders that just got their end acknowledged exit
                for _ in $(seq 100); do
                    alive=0
                    for p in "${dpids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
                    [ $alive -eq 0 ] && break
                    sleep 0.1
                done
            fi
            for ((i = 0; i < ${#dpids[@]}; i++)); do
                if kill -0 "${dpids[$i]}" 2>/dev/null; then # the supervisor first, then its decoder
                    kill "${dpids[$i]}" 2>/dev/null || :
                    kill -TERM -- "-$(cat "$work/pids/decode.$i")" 2>/dev/null || :
                fi
                wait "${dpids[$i]}" || drc=1
            done
            if [ $grc -eq 0 ] && [ $drc -eq 0 ]; then
                note "pass $pass: clean"
                report
                exit 0
            fi
            note "pass $pass failed (gpu side $grc, decoders $drc): the next pass re-sends what the cache lacks"
        done
        report
        exit 1 ;;
    decode)
        [ -n "$shard" ] && [ -n "$to" ] || { echo "scale-out.sh decode: --shard i/N and --to URL" >&2; exit 2; }
        supervise_decoder "${shard%/*}" "${shard#*/}" "$to" "${ids_cmd:-true}" ;;
    *) sed -n '2,36p' "$0" >&2; exit 2 ;;
esac
