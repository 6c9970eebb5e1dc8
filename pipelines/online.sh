#!/usr/bin/env bash
# pipelines/online.sh: training without a cache. Records stream from the decoders through the
# encoders straight into the trainer over ZeroMQ:
#
#   qie-decode --shard i/N --out tcp://127.0.0.1:PORT         (N decoders; or on other hosts)
#     -> qie-encode-vae | qie-encode-text --out tcp://127.0.0.1:PORT+1
#     -> qie-train --in tcp://127.0.0.1:PORT+1                   (binds, waits for the encoders)
#
#   pipelines/online.sh --decoders N [--port P] [cache.sh + qie-train flags...]
#
# qie-train reads a non-cache stream whole into memory before its first step (docs/train.md
# "Data"), so this mode is for small sets and for trying a setting without filling a cache; the
# upstream stages stay bounded by credit-based back-pressure while the trainer is busy or stopped
# (tests/t_backpressure.sh). Nothing is re-sent here: a stage that dies fails the run (exit
# non-zero), and the run is simply started again — use pipelines/scale-out.sh + a cache for runs
# that must survive failures.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="${QIE_BIN:-$here/build/bin}:$PATH"
decoders=1 port=5600 flags=()
while [ $# -gt 0 ]; do
    case $1 in
        --decoders) decoders=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        *) flags+=("$1"); shift ;;
    esac
done
# the trainer's flags: those qie-train knows (cache.sh routes the rest)
known=$(qie-train --help 2>&1 | grep -o -- '--[a-z0-9_]*' | sort -u)
tflags=()
for ((k = 0; k < ${#flags[@]}; k++)); do
    a=${flags[$k]}; n=${a%%=*}; n=--${n#--}; n=${n//-/_}; n=--${n#__}
    v=(); if [[ $a != *=* ]] && [ $((k + 1)) -lt ${#flags[@]} ] && [[ ${flags[$((k + 1))]} != --* ]]; then
        k=$((k + 1)); v=("${flags[$k]}"); fi
    if grep -qx -- "$n" <<< "$known" && [ "$n" != --in ]; then tflags+=("$a" "${v[@]}"); fi
done

mid="tcp://127.0.0.1:$((port + 1))"
pids=()
qie-train "${tflags[@]}" --in "$mid" & train=$!
bash "$here/pipelines/cache.sh" --only encode "${flags[@]}" --in "tcp://0.0.0.0:$port?peers=$decoders" --out "$mid" &
pids+=($!)
for ((i = 0; i < decoders; i++)); do
    bash "$here/pipelines/cache.sh" --only decode "${flags[@]}" --shard "$i/$decoders" --out "tcp://127.0.0.1:$port" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
wait $train || rc=$?
exit $rc
