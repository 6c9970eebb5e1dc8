#!/usr/bin/env bash
# t_launch.sh: qie-launch as a real process (stages/launch, docs/distributed.md "Launching").
#   - spawn: one child per rank with the torchrun variables; real CPU collectives across them;
#     two launchers as two "nodes" of one job;
#   - failure: a rank exiting 1 or killed by a signal ends the others at once, the launcher exits
#     with that status and names the rank; a rank ignoring SIGTERM gets SIGKILL after the grace
#     period; a failure on one "node" ends the other node's launcher too (through the
#     collectives); SIGTERM to the launcher reaches every rank;
#   - the environment of torchrun and Slurm (join mode, one launcher per node) and usage errors.
set -u
. "$(dirname "$0")/shlib.sh"
TC="${QIE_BUILD:-$PWD/build}/tests/test_coll"
L=(qie-launch --log_level warn)
now() { date +%s.%N; }
within() { awk -v a="$1" -v b="$(now)" -v l="$2" 'BEGIN { exit !(b - a < l) }'; }

# spawn: every rank with its variables
"${L[@]}" --nproc_per_node 3 --device cpu --master_port 0 \
    sh -c 'echo "rank $RANK of $WORLD_SIZE local $LOCAL_RANK/$LOCAL_WORLD_SIZE node $GROUP_RANK dev $QIE_LAUNCH_DEVICE"' \
    >"$T_TMP/out" 2>"$T_TMP/err"
check "3 ranks, exit 0" test $? -eq 0
check "ranks 0..2 with their variables" test "$(sort "$T_TMP/out" | tr '\n' '|')" = \
    "rank 0 of 3 local 0/3 node 0 dev cpu|rank 1 of 3 local 1/3 node 0 dev cpu|rank 2 of 3 local 2/3 node 0 dev cpu|"

# real collectives across the launched ranks
"${L[@]}" --nproc_per_node 3 --device cpu --master_port 0 "$TC" --worker >"$T_TMP/out" 2>"$T_TMP/err"
check "collectives under qie-launch" test $? -eq 0
check "every rank summed 1+2+3" test "$(grep -c 'sum 6$' "$T_TMP/out")" -eq 3

# one rank exits 1: the others (sleeping 30 s) are stopped at once
t0=$(now)
"${L[@]}" --nproc_per_node 3 --device cpu sh -c '[ "$RANK" = 1 ] && { sleep 0.2; exit 1; }; sleep 30' 2>"$T_TMP/err"
rc=$?
check "failing rank: launcher exits 1" test $rc -eq 1
check "failing rank: named" grep -q "rank 1 exited with status 1" "$T_TMP/err"
check "failing rank: others stopped within 3 s" within "$t0" 3

# one rank killed by a signal
"${L[@]}" --nproc_per_node 2 --device cpu sh -c '[ "$RANK" = 1 ] && kill -9 $$; sleep 30' 2>"$T_TMP/err"
rc=$?
check "killed rank: exit 137" test $rc -eq 137
check "killed rank: signal named" grep -q "rank 1 was killed by signal 9" "$T_TMP/err"

# a rank that ignores SIGTERM gets SIGKILL after the grace period
t0=$(now)
"${L[@]}" --nproc_per_node 2 --device cpu --grace_period 1 \
    sh -c 'trap "" TERM; [ "$RANK" = 0 ] && exit 2; sleep 30' 2>"$T_TMP/err"
rc=$?
check "grace period: exit 2" test $rc -eq 2
check "grace period: SIGKILL after 1 s" within "$t0" 4

# SIGTERM to the launcher reaches every rank
"${L[@]}" --nproc_per_node 2 --device cpu sh -c 'trap "echo got TERM; exit 0" TERM; sleep 30 & wait' >"$T_TMP/out" 2>&1 &
lp=$!
sleep 0.5
t0=$(now)
kill -TERM $lp
wait $lp
rc=$?
check "SIGTERM: launcher exits 143" test $rc -eq 143
check "SIGTERM: forwarded to both ranks" test "$(grep -c 'got TERM' "$T_TMP/out")" -eq 2
check "SIGTERM: quick" within "$t0" 3

# two "nodes" on this host: one job of 4 ranks
port=$("$TC" --free-port)
"${L[@]}" --nnodes 2 --node_rank 1 --nproc_per_node 2 --device cpu --master_addr 127.0.0.1 --master_port "$port" \
    "$TC" --worker >"$T_TMP/n1" 2>&1 &
n1=$!
"${L[@]}" --nnodes 2 --node_rank 0 --nproc_per_node 2 --device cpu --master_addr 127.0.0.1 --master_port "$port" \
    "$TC" --worker >"$T_TMP/n0" 2>&1
rc0=$?
wait $n1
rc1=$?
check "two nodes: both launchers exit 0" test $rc0 -eq 0 -a $rc1 -eq 0
check "two nodes: 4 ranks summed 1+2+3+4" test "$(cat "$T_TMP/n0" "$T_TMP/n1" | grep -c 'of 4 .*sum 10$')" -eq 4

# a rank of node 1 fails: node 0's launcher learns it through the collectives
port=$("$TC" --free-port)
t0=$(now)
QIE_TEST_FAIL_RANK=3 "${L[@]}" --nnodes 2 --node_rank 1 --nproc_per_node 2 --device cpu --master_addr 127.0.0.1 \
    --master_port "$port" "$TC" --worker >"$T_TMP/n1" 2>&1 &
n1=$!
QIE_TEST_FAIL_RANK=3 "${L[@]}" --nnodes 2 --node_rank 0 --nproc_per_node 2 --device cpu --master_addr 127.0.0.1 \
    --master_port "$port" "$TC" --worker >"$T_TMP/n0" 2>&1
rc0=$?
wait $n1
rc1=$?
check "remote failure: node 1 names rank 3, not its echo" grep -q "error: rank 3 exited with status 1 (the job" "$T_TMP/n1"
check "remote failure: node 0 fails too (echo status 86)" test $rc0 -eq 86 -a $rc1 -eq 1
# rank 0 reads its peers in rank order: it may meet rank 2 (stopped by node 1's launcher) first
check "remote failure: node 0 says which peer closed" grep -Eq "rank [23] .*closed" "$T_TMP/n0"
check "remote failure: within 5 s" within "$t0" 5

# join mode: the environment of torchrun / srun describes this process
out=$(env RANK=3 WORLD_SIZE=4 LOCAL_RANK=1 LOCAL_WORLD_SIZE=2 MASTER_ADDR=h0 MASTER_PORT=1234 \
      "${L[@]}" sh -c 'echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK $MASTER_ADDR:$MASTER_PORT')
check "torchrun variables: joined as rank 3" test "$out" = "3 4 1 2 1 h0:1234"
out=$(env -u RANK -u WORLD_SIZE SLURM_PROCID=5 SLURM_NTASKS=8 SLURM_LOCALID=1 SLURM_NODEID=1 SLURM_NNODES=2 \
      SLURM_STEP_TASKS_PER_NODE='4(x2)' SLURM_JOB_ID=4242 SLURM_STEP_NODELIST='gpu-[07-08]' \
      "${L[@]}" sh -c 'echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK $MASTER_ADDR:$MASTER_PORT')
check "Slurm task per GPU: joined as rank 5" test "$out" = "5 8 1 4 1 gpu-07:24242"
out=$(env SLURM_PROCID=1 SLURM_NTASKS=2 SLURM_NODEID=1 SLURM_NNODES=2 SLURM_JOB_ID=77 SLURM_STEP_NODELIST='n[1-2]' \
      "${L[@]}" --nproc_per_node 2 --device cpu sh -c 'echo $RANK $WORLD_SIZE $LOCAL_RANK $MASTER_ADDR:$MASTER_PORT' | sort)
check "Slurm task per node: spawns ranks 2, 3 of 4" test "$(echo "$out" | tr '\n' '|')" = "2 4 0 n1:20077|3 4 1 n1:20077|"

# usage errors: exit 2 with a reason
rc_of() { "$@" >/dev/null 2>"$T_TMP/err"; echo $?; }
check "no program: exit 2" test "$(rc_of "${L[@]}" --nproc_per_node 2)" = 2
check "two nodes need --master_addr" test "$(rc_of "${L[@]}" --nnodes 2 --node_rank 1 --nproc_per_node 2 true)" = 2
check "  ... and say so" grep -q "master_addr" "$T_TMP/err"
check "srun task per GPU + --nproc_per_node: refused" test "$(rc_of env SLURM_PROCID=0 SLURM_NTASKS=8 \
    SLURM_STEP_TASKS_PER_NODE='4(x2)' SLURM_NNODES=2 "${L[@]}" --nproc_per_node 4 true)" = 2
check "  ... with a hint" grep -q "hint:" "$T_TMP/err"
check "missing program: exit 127" test "$(rc_of "${L[@]}" --nproc_per_node 1 --device cpu /no/such/program)" = 127
finish
