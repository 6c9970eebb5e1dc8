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
test_ports() { # test_ports N: a base port P for P .. P+N-1, below the kernel's ephemeral range (an
    # outbound connection can take any port in that range, and a bind there then fails with
    # "Address already in use"), spread over processes
    local lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) || lo=32768
    [ "${lo:-0}" -gt $((10000 + 2 * $1)) ] 2>/dev/null || lo=32768
    echo $((10000 + ($$ * 31 + RANDOM) % (lo - 10000 - $1)))
}
