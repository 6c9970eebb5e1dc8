#!/usr/bin/env bash
# t_cache.sh: qie-cache as real processes: output of stats/ls/verify, resume after kill -9,
# readers beside a writer, settings mismatch, bad input, a full disk, a foreign folder.
source "$(dirname "$0")/shlib.sh"
Q=qie-cache
T=$T_TMP

count_of() { $Q stats "$1" --json 2>/dev/null | tr -d ' \t\n' | sed -n 's/.*"records":\([0-9]*\).*/\1/p'; }
# every id exactly once, and the number of them
ids_once() { # DIR N
    local ids; ids=$($Q ls "$1" --ids_only) || return 1
    [ "$(printf '%s\n' "$ids" | sort | uniq -d | wc -l)" -eq 0 ] && [ "$(printf '%s\n' "$ids" | wc -l)" -eq "$2" ]
}

# ---- stats / ls / verify output ----
$Q gen --count 12 --size 20000 --setting model=tiny vae_hash=A --out "$T/r12.qie"
$Q put "$T/c1" --in "$T/r12.qie" --batch 5 --progress=false 2>"$T/put1.err"
check "put stores 12" grep -q "12 read, 12 stored, 0 merged, 0 skipped" "$T/put1.err"
$Q stats "$T/c1" >"$T/stats.txt"
check "stats records" grep -qx "records: 12" "$T/stats.txt"
check "stats complete" grep -q "^complete for training: 12 of 12 (prompt_embeds_empty not required)" "$T/stats.txt"
check "stats group" grep -qx "  64x96 sources=1: 4, 4" "$T/stats.txt"
check "stats histogram" grep -qx "  2: 4" "$T/stats.txt"
check "stats tensor shape" grep -qx "  source_mean.1 bf16 \[16,1,12,8\]: 4" "$T/stats.txt"
check "stats settings" grep -qx "  cfg.vae_hash = A" "$T/stats.txt"
$Q stats "$T/c1" --json | tr -d ' \t\n' >"$T/stats.json"
check "stats json" grep -q '"records":12,.*"complete":12,.*"groups":\[{"bucket":\[64,64\],"sources":0,"count":4,"complete":4}' "$T/stats.json"
$Q ls "$T/c1" >"$T/ls.txt"
check "ls lines" [ "$(wc -l <"$T/ls.txt")" -eq 12 ]
check "ls line" grep -qP '^s000004\t64x96\t1\t[0-9]+\tcomplete$' "$T/ls.txt"
check "ls filter" [ "$($Q ls "$T/c1" --bucket 96x64 --ids_only | tr '\n' ' ')" = "s000002 s000005 s000008 s000011 " ]
check "verify clean" bash -c "$Q verify '$T/c1' | grep -qx 'verify $T/c1: 12 records, 0 bad'"
check "cat round trip" bash -c "$Q cat '$T/c1' --ids <(printf 's000003\n') | qie-cat --print | grep -q '^s000003 index=3 bucket=64x64 sources=0'"
$Q put "$T/c1" --in "$T/r12.qie" --progress=false 2>"$T/put2.err"
check "re-put skips" grep -q "12 read, 0 stored, 0 merged, 12 skipped" "$T/put2.err"

# ---- parts merged by id ----
$Q gen --count 6 --parts latents --out - | $Q put "$T/c2" --progress=false 2>/dev/null
check "latents only: incomplete" bash -c "$Q stats '$T/c2' | grep -q 'complete for training: 0 of 6'"
$Q gen --count 6 --parts prompt --out - | $Q put "$T/c2" --progress=false 2>"$T/merge.err"
check "parts merged" grep -q "6 read, 0 stored, 6 merged" "$T/merge.err"
check "merged: complete" bash -c "$Q stats '$T/c2' | grep -q 'complete for training: 6 of 6'"

# ---- settings mismatch ----
$Q gen --count 3 --start 100 --setting vae_hash=B --out "$T/other.qie"
check "other records refused" bash -c "! $Q put '$T/c1' --in '$T/other.qie' --progress=false 2>'$T/mm.err'"
check "mismatch message" grep -q "vae_hash='B', but the cache was built with 'A'" "$T/mm.err"
check "other --setting refused" bash -c "! $Q put '$T/c1' --setting vae_hash=C --in '$T/r12.qie' 2>/dev/null"
check "reader expect ok" bash -c "$Q stats '$T/c1' --expect vae_hash=A model=tiny >/dev/null"
check "reader expect refused" bash -c "! $Q ls '$T/c1' --expect vae_hash=B 2>/dev/null"
check "endpoint expect refused" bash -c "! qie-cat --in 'lmdb://$T/c1?expect=model=big' --print 2>/dev/null"
check "nothing added" [ "$(count_of "$T/c1")" -eq 12 ]

# ---- malformed records are reported with their position and skipped ----
$Q gen --count 20 --bad_every 5 --out "$T/bad.qie"
check "bad input: put ok" $Q put "$T/c3" --in "$T/bad.qie" --progress=false 2>"$T/bad.err"
check "bad input: position" grep -q "record 4 of the input (32 bytes) skipped" "$T/bad.err"
check "bad input: 16 kept" [ "$(count_of "$T/c3")" -eq 16 ]

# ---- kill -9 while the writer waits on input: only whole batches are visible; resume ----
N=240
$Q gen --count $N --size 32768 --out "$T/all.qie"
head -c $(( $(stat -c %s "$T/all.qie") * 2 / 5 )) "$T/all.qie" >"$T/part.qie"
mkfifo "$T/fifo"
tail -c +1 -f "$T/part.qie" >"$T/fifo" & FEED=$!
$Q put "$T/c4" --in "$T/fifo" --batch 8 --progress=false 2>/dev/null & PUT=$!
for _ in $(seq 100); do n=$(count_of "$T/c4"); [ "${n:-0}" -ge 80 ] && break; sleep 0.05; done
kill -9 $PUT; wait $PUT 2>/dev/null; kill $FEED 2>/dev/null; wait $FEED 2>/dev/null
n=$(count_of "$T/c4")
check "killed writer left whole batches ($n)" [ "${n:-0}" -ge 80 -a $((n % 8)) -eq 0 -a "${n:-0}" -lt $N ]
$Q put "$T/c4" --in "$T/all.qie" --batch 8 --progress=false 2>"$T/resume.err"
check "resume skips committed" grep -q "$N read, $((N - n)) stored, 0 merged, $n skipped" "$T/resume.err"
check "resume: every id once" ids_once "$T/c4" $N
check "resume: verify clean" bash -c "$Q verify '$T/c4' >/dev/null"

# ---- kill -9 in the middle of commits, twice, then the same command again ----
$Q gen --count 120 --size 200000 --out "$T/big.qie"
for delay in 0.15 0.3; do
    $Q put "$T/c5" --in "$T/big.qie" --batch 8 --sync full --progress=false 2>/dev/null & PUT=$!
    sleep $delay
    kill -9 $PUT 2>/dev/null; wait $PUT 2>/dev/null
done
check "after kills: verify clean" bash -c "$Q verify '$T/c5' >/dev/null"
$Q put "$T/c5" --in "$T/big.qie" --batch 8 --progress=false 2>/dev/null
check "after kills: every id once" ids_once "$T/c5" 120
check "after kills + re-run: verify clean" bash -c "$Q verify '$T/c5' >/dev/null"

# ---- two readers beside one writer: only committed, whole batches, complete records ----
$Q gen --count 160 --size 16384 --delay_ms 4 --out - | $Q put "$T/c6" --batch 8 --progress=false 2>/dev/null & PUT=$!
reader() { # $1: log of problems
    local last=0 n
    while kill -0 $PUT 2>/dev/null; do
        n=$($Q stats "$T/c6" --json 2>/dev/null | tr -d ' \t\n')
        if [ -z "$n" ]; then sleep 0.01; continue; fi   # not created yet
        local rec=$(sed -n 's/.*"records":\([0-9]*\).*/\1/p' <<<"$n") comp=$(sed -n 's/.*"complete":\([0-9]*\),.*/\1/p' <<<"$n")
        [ $((rec % 8)) -eq 0 ] || echo "partial batch visible: $rec" >>"$1"
        [ "$rec" = "$comp" ] || echo "incomplete records visible: $comp of $rec" >>"$1"
        [ "$rec" -ge "$last" ] || echo "count went back: $last -> $rec" >>"$1"
        last=$rec
        $Q cat "$T/c6" | qie-cat --check --print >/dev/null 2>&1 || echo "cat | qie-cat --check failed" >>"$1"
        $Q verify "$T/c6" >/dev/null 2>&1 || echo "verify failed at $rec" >>"$1"
        echo "$rec" >>"$1.seen"
    done
}
: >"$T/r1.log"; : >"$T/r2.log"
reader "$T/r1.log" & R1=$!
reader "$T/r2.log" & R2=$!
wait $PUT; PUT_RC=$?
wait $R1 $R2
check "concurrent: writer ok" [ $PUT_RC -eq 0 ]
check "concurrent: readers saw no problem" bash -c "! cat '$T/r1.log' '$T/r2.log' | grep -m 5 ."
check "concurrent: readers ran during the write" [ "$(cat "$T/r1.log.seen" "$T/r2.log.seen" 2>/dev/null | sort -u | wc -l)" -ge 2 ]
check "concurrent: all there" [ "$(count_of "$T/c6")" -eq 160 ]

# ---- disk full (a file size limit stands in for it): clear error, what was committed stays ----
$Q gen --count 60 --size 65536 --out "$T/fill.qie"
( ulimit -f 1024; exec $Q put "$T/c7" --in "$T/fill.qie" --batch 4 --progress=false ) 2>"$T/full.err"
check "disk full: put fails" [ $? -ne 0 ]
check "disk full: message" grep -q "disk full or file size limit" "$T/full.err"
n=$(count_of "$T/c7")
check "disk full: committed batches stay ($n)" [ "${n:-0}" -gt 0 -a $((n % 4)) -eq 0 ]
check "disk full: verify clean" bash -c "$Q verify '$T/c7' >/dev/null"

# ---- not a cache ----
mkdir -p "$T/junk" && head -c 65536 /dev/urandom >"$T/junk/data.mdb"
check "corrupt folder refused" bash -c "! $Q stats '$T/junk' 2>'$T/junk.err'"
check "corrupt folder message" grep -q "data.mdb is not an LMDB environment" "$T/junk.err"
check "missing folder refused" bash -c "$Q ls '$T/none' 2>&1 | grep -q 'no cache here'"

finish
