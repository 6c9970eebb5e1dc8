# tests/shlib.sh: sourced by tests/t_*.sh. check NAME CMD... counts a pass or a failure;
# finish prints "N passed, N failed" and exits with the verdict. $QIE_BIN holds the executables.
t_passed=0 t_failed=0
: "${QIE_BIN:=$PWD/build/bin}"
export PATH="$QIE_BIN:$PATH"
T_TMP=$(mktemp -d "${TMPDIR:-/tmp}/qie-t-XXXXXX")
trap 'rm -rf "$T_TMP"; kill $(jobs -p) 2>/dev/null' EXIT
check() { # check NAME command...: passes when the command exits 0
    local name=$1; shift
    if "$@"; then t_passed=$((t_passed + 1)); echo "ok   $name"
    else t_failed=$((t_failed + 1)); echo "FAIL $name"; fi
}
finish() { echo "$t_passed passed, $t_failed failed"; [ "$t_failed" -eq 0 ]; }
