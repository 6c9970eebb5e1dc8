#!/usr/bin/env bash
# bench_cache.sh [BUILD]: throughput of the LMDB latent cache (a benchmark, not a test).
#   put:  synthetic ~2 MB records (1024-class bucket: bf16 target mean+logvar 1 MiB + a prompt
#         embedding; spec 9.1's bare case is 1.96 MB) piped from `qie-cache gen` into
#         `qie-cache put`, for each sync mode; the time includes the final mdb_env_sync.
#   read: `qie-cache bench-read`: random (bucket group, record) picks as the trainer's sampler
#         draws them, every page of each value touched; cold (page cache dropped, when we may)
#         and warm.
#   dd:   the disk's sequential write speed with fdatasync, for scale.
# Environment: BENCH_DIR (scratch folder on the disk to measure; default /tmp), BENCH_N (records
# per run, default 2500 = ~5 GB: more than the dirty-page limit, so the disk is what is timed),
# BENCH_READS (default 2000).
set -eu
BUILD=${1:-build}
Q=$PWD/$BUILD/bin/qie-cache
[ -x "$Q" ] || { echo "bench_cache: $Q missing (make $BUILD/bin/qie-cache)" >&2; exit 2; }
DIR=$(mktemp -d "${BENCH_DIR:-/tmp}/qie-bench-cache-XXXXXX")
trap 'rm -rf "$DIR"' EXIT
N=${BENCH_N:-2500}
READS=${BENCH_READS:-2000}
SIZE=2000000
GEN=(gen --count "$N" --size $SIZE --sources_max 0 --buckets 1024x1024,1024x768,768x1024,1328x1328 --out -)

drop_caches() { sync; { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; }
now() { date +%s.%N; }

echo "qie-cache bench: $N records of ~$((SIZE / 1000)) kB in $DIR ($(df -h "$DIR" | awk 'NR==2 {print $1}'))"
t0=$(now); $Q "${GEN[@]}" >/dev/null; t1=$(now)
printf "%-28s %8.0f MB/s %8.0f records/s   (the producer alone, to a pipe)\n" "gen" \
    "$(echo "$N * $SIZE / 1000000 / ($t1 - $t0)" | bc -l)" "$(echo "$N / ($t1 - $t0)" | bc -l)"

for sync in meta full none; do
    rm -rf "$DIR/c"
    drop_caches
    t0=$(now)
    $Q "${GEN[@]}" | $Q put "$DIR/c" --sync $sync --batch 64 --progress=false --log_level warn
    t1=$(now)
    bytes=$($Q stats "$DIR/c" --json | tr -d ' \t\n' | sed -n 's/.*"bytes":\([0-9]*\).*/\1/p')
    printf "%-28s %8.0f MB/s %8.0f records/s   (%.2f GB, file %s)\n" "put --sync $sync (batch 64)" \
        "$(echo "$bytes / 1000000 / ($t1 - $t0)" | bc -l)" "$(echo "$N / ($t1 - $t0)" | bc -l)" \
        "$(echo "$bytes / 1000000000" | bc -l)" "$(du -h "$DIR/c/data.mdb" | cut -f1)"
done

drop_caches
echo -n "cold: "; $Q bench-read "$DIR/c" --reads "$READS" --seed 7
echo -n "warm: "; $Q bench-read "$DIR/c" --reads "$READS" --seed 7
rm -rf "$DIR/c"

drop_caches
dd if=/dev/zero of="$DIR/dd.tmp" bs=1M count=$((N * SIZE / 1048576)) conv=fdatasync 2>&1 | tail -1 | sed 's/^/dd sequential write (fdatasync): /'
rm -f "$DIR/dd.tmp"
