#!/usr/bin/env bash
# t_endpoints: endpoints with real separate processes: the same bytes through pipe -> tcp -> ipc
# -> file -> pipe, fan-in and fan-out end of stream, a peer that dies mid-stream, and pipeline
# exit codes.
source "$(dirname "$0")/shlib.sh"
port=$(test_ports 5)
T=60   # no single step may hang the suite

gen_records --n 40 --bytes 200000 --out "$T_TMP/a.qie"

same_bytes_through_every_kind() {
    local ipc="ipc://$T_TMP/s.ipc"
    timeout $T qie-cat --in "tcp://127.0.0.1:$port" --out "$ipc" & local p1=$!
    timeout $T qie-cat --in "$ipc" --out "$T_TMP/b.qie" & local p2=$!
    timeout $T qie-cat --in - --out "tcp://127.0.0.1:$port" < <(timeout $T qie-cat --in "$T_TMP/a.qie" --out -) || return 1
    wait $p1 && wait $p2 || return 1
    timeout $T qie-cat --in - --out "$T_TMP/c.qie" < "$T_TMP/b.qie" || return 1
    cmp -s "$T_TMP/a.qie" "$T_TMP/c.qie"
}
check "pipe -> tcp -> ipc -> file -> pipe keeps the bytes" same_bytes_through_every_kind

fan_in_three_producers() {
    local url="tcp://127.0.0.1:$((port + 1))"
    for i in 1 2 3; do timeout $T gen_records --n 30 --prefix "p$i" --out "$url" & done
    timeout $T qie-cat --in "$url?peers=3" --print > "$T_TMP/fanin.txt" || return 1
    wait
    [ "$(wc -l < "$T_TMP/fanin.txt")" -eq 90 ] && [ "$(cut -d' ' -f1 "$T_TMP/fanin.txt" | sort -u | wc -l)" -eq 90 ]
}
check "fan-in: 3 producers into one consumer, every record once" fan_in_three_producers

fan_out_two_consumers() {
    local url="tcp://127.0.0.1:$((port + 2))"
    timeout $T qie-cat --in ">$url" --print > "$T_TMP/o1.txt" & local r1=$!
    timeout $T qie-cat --in ">$url" --print > "$T_TMP/o2.txt" & local r2=$!
    timeout $T gen_records --n 60 --out "@$url?peers=2" || return 1
    wait $r1 && wait $r2 || return 1
    [ "$(cat "$T_TMP/o1.txt" "$T_TMP/o2.txt" | cut -d' ' -f1 | sort -u | wc -l)" -eq 60 ] &&
        [ "$(cat "$T_TMP/o1.txt" "$T_TMP/o2.txt" | wc -l)" -eq 60 ] &&
        [ -s "$T_TMP/o1.txt" ] && [ -s "$T_TMP/o2.txt" ]
}
check "fan-out: one producer into 2 consumers, every record once, both ended" fan_out_two_consumers

producer_dies_over_zmq() {
    local url="tcp://127.0.0.1:$((port + 3))"
    timeout $T gen_records --n 100 --die_after 20 --out "$url" &
    timeout $T qie-cat --in "$url" --print > "$T_TMP/d.txt" 2> "$T_TMP/d.err"
    local rc=$?
    wait
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "disconnected before the end" "$T_TMP/d.err"
}
check "a producer killed mid-stream fails the consumer (zmq), no hang" producer_dies_over_zmq

consumer_dies_over_zmq() {
    local url="tcp://127.0.0.1:$((port + 4))"
    timeout $T qie-cat --in "$url" --count 5 --print > /dev/null &
    timeout $T gen_records --n 100 --sleep_ms 5 --out "$url" 2> "$T_TMP/c.err"
    local rc=$?
    wait
    [ $rc -ne 0 ] && [ $rc -ne 124 ]
}
check "a consumer that goes away fails the producer (zmq), no hang" consumer_dies_over_zmq

pipeline_exit_codes() {
    # good pipeline: exit 0 at every stage
    set -o pipefail
    timeout $T gen_records --n 5 | timeout $T qie-cat | timeout $T qie-cat --print > /dev/null || return 1
    # the first stage dies: the last stage exits non-zero
    timeout $T gen_records --n 50 --die_after 10 | timeout $T qie-cat | timeout $T qie-cat --print > /dev/null 2>&1
    local st=("${PIPESTATUS[@]}")
    [ "${st[2]}" -ne 0 ] || return 1
    # a middle stage fails (bad record): downstream sees the abort
    printf 'QIEF\001\000\000\000\004\000\000\000\000\000\000\000junk' | timeout $T qie-cat --check | timeout $T qie-cat --print > /dev/null 2> "$T_TMP/p.err"
    st=("${PIPESTATUS[@]}")
    [ "${st[1]}" -ne 0 ] && [ "${st[2]}" -ne 0 ] && grep -q "upstream stage failed" "$T_TMP/p.err"
}
check "pipeline exit codes: 0 when all succeed, non-zero when any stage fails" pipeline_exit_codes

truncated_pipe() {
    head -c 100000 "$T_TMP/a.qie" | timeout $T qie-cat --print > /dev/null 2> "$T_TMP/t.err"
    [ $? -ne 0 ] && grep -q -E "truncated|end-of-stream" "$T_TMP/t.err"
}
check "a truncated stream on stdin is an error" truncated_pipe

count_and_skip() {
    [ "$(qie-cat --in "$T_TMP/a.qie" --skip 10 --count 5 --print | cut -d' ' -f1 | tr '\n' ' ')" = "rec-10 rec-11 rec-12 rec-13 rec-14 " ]
}
check "qie-cat --skip/--count" count_and_skip

help_and_unknown_flag() {
    qie-cat --help | grep -q -- "--count" && ! qie-cat --bogus 2> "$T_TMP/h.err" && grep -q -- "--bogus" "$T_TMP/h.err"
}
check "--help and unknown flags" help_and_unknown_flag

finish
