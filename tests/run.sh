#!/usr/bin/env bash
# tests/run.sh BUILD_DIR...: for each build folder, runs every test binary in BUILD_DIR/tests and
# every tests/t_*.sh (each with a time limit), then prints the summed "N passed, N failed" as the
# last line. Shell tests get QIE_BIN (that build's qie-* executables) in the environment.
set -u
[ $# -eq 0 ] && set -- build
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
passed=0 failed=0
run_one() { # label, command...
    local name=$1; shift
    local log; log=$(mktemp)
    timeout --signal=KILL "${QIE_TEST_TIMEOUT:-600}" "$@" >"$log" 2>&1
    local rc=$?
    local last; last=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    local p=0 f=0
    if [ -n "$last" ]; then p=${last%% passed*}; f=${last#*, }; f=${f%% failed*}; fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi   # crashed or timed out: count it
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$f" -ne 0 ]; then
        echo "== $name: $p passed, $f failed (exit $rc)"; tail -n 40 "$log"
    else
        echo "== $name: $p passed"
    fi
    rm -f "$log"
}
for build in "$@"; do
    export QIE_BIN="$PWD/$build/bin" QIE_BUILD="$PWD/$build"
    for t in "$build"/tests/test_*; do
        [ -x "$t" ] || continue
        case "$t" in *.d|*.o) continue;; esac
        run_one "$build/$(basename "$t")" "$t"
    done
    for t in tests/t_*.sh; do
        [ -f "$t" ] || continue
        run_one "$build/$(basename "$t")" bash "$t"
    done
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
