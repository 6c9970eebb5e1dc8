#!/usr/bin/env bash
# bench_decode.sh: qie-decode -j1 against the reference's pixel path in Python, one core each.
#
# Makes BENCH_N 1024x1024 JPEG targets (q90, 4:2:0) with one 1024x1024 JPEG source each, then
#   qie:       qie-decode -j 1 --out FILE (records written to a file on the same disk)
#   reference: PIL open/convert, torch float32 /255, interpolate(bilinear, antialias) (what
#              torchvision Resize does to a float tensor), centre crop, normalise, bf16; PIL
#              LANCZOS for the source(s) -- with torch.set_num_threads(1)
# and prints images/s per core side by side. Settings: BENCH_N (default 48), BENCH_S (default
# 1328, the shipped --image_sample_size), BENCH_MODE (qwen_image_edit_plus | qwen_image_edit),
# BUILD (default build), BENCH_RUNS (rounds, default 3), BENCH_CPU (the CPU both are pinned to,
# default 1), BENCH_BASE_BIN (another qie-decode, e.g. a build of the previous commit, run in
# every round too: before/after in one run). Usage: make bench-decode, or bash
# scripts/bench_decode.sh.
set -euo pipefail
BUILD=${BUILD:-build}
N=${BENCH_N:-48}
S=${BENCH_S:-1328}
MODE=${BENCH_MODE:-qwen_image_edit_plus}
BIN=$BUILD/bin/qie-decode
[ -x "$BIN" ] || make --no-print-directory BUILD="$BUILD" "$BIN" >/dev/null
DIR=$(mktemp -d "${TMPDIR:-/tmp}/qie-bench-decode-XXXXXX")
trap 'rm -rf "$DIR"' EXIT

python3 - "$DIR" "$N" <<'EOF'
import json, sys
import numpy as np
from PIL import Image
d, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
y, x = np.mgrid[0:1024, 0:1024]
meta = []
for i in range(n):
    for kind in ("t", "s"):
        # smooth structure plus texture: a few bits per pixel at q90, like photographs
        f = rng.uniform(0.005, 0.03, 3)
        base = np.stack([127 + 100 * np.sin(x * f[0] + y * f[1] + i),
                         127 + 100 * np.cos(y * f[2] - x * f[0]),
                         127 + 100 * np.sin((x + y) * f[1] * 0.7)], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(f"{d}/{kind}{i}.jpg", quality=90)
    meta.append({"file_path": f"t{i}.jpg", "text": f"edit {i}", "source_file_path": [f"s{i}.jpg"]})
json.dump(meta, open(f"{d}/meta.json", "w"))
EOF
bytes=$(du -sb "$DIR" | cut -f1)

# Each round: qie then the reference, both pinned to one CPU (BENCH_CPU, default 1, when taskset
# exists). BENCH_RUNS rounds (default 3); the best and the median are printed.
# qie: CPU seconds (user + sys) of the one process, so not the disk's fsync wait nor other jobs
# sharing the machine; reference: time.process_time() around its loop (imports excluded).
# Wall rates are printed too.
RUNS=${BENCH_RUNS:-3}
PIN=()
command -v taskset >/dev/null && PIN=(taskset -c "${BENCH_CPU:-1}")
cat >"$DIR/ref.py" <<'EOF'
import json, math, sys, time
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
torch.set_num_threads(1)
d, n, S, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, "scripts/golden")
from decode_buckets import target_plan, calculate_dimensions, v1_source_size
meta = json.load(open(f"{d}/meta.json"))
sink = 0
t0, w0 = time.process_time(), time.perf_counter()
for e in meta:
    arr = np.array(Image.open(f"{d}/{e['file_path']}").convert("RGB"))[None]
    _, h, w, _ = arr.shape
    pv = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() / 255.
    cs, rs, (top, left) = target_plan(h, w, S, 1.0)
    if list(rs) != [h, w]:
        pv = F.interpolate(pv, size=list(rs), mode="bilinear", align_corners=False, antialias=True)
    pv = pv[..., top:top + cs[0], left:left + cs[1]]
    pv = ((pv - 0.5) / 0.5).to(torch.bfloat16)
    sink += pv.numel()
    for s in e["source_file_path"]:
        im = Image.open(f"{d}/{s}").convert("RGB")
        W, H = im.size
        if mode == "qwen_image_edit":
            sizes = [v1_source_size(W, H)]
        else:
            sizes = [calculate_dimensions(1024 * 1024, W / H), calculate_dimensions(384 * 384, W / H)]
        for (sw, sh) in sizes:
            sink += np.array(im.resize((sw, sh), resample=Image.LANCZOS)).size
t1, w1 = time.process_time(), time.perf_counter()
print(f"{n / (t1 - t0):.2f} {n / (w1 - w0):.2f}")
EOF
: >"$DIR/rates"
for ((run = 0; run < RUNS; run++)); do
  /usr/bin/time -f "%e %U %S" -o "$DIR/time" "${PIN[@]}" \
    "$BIN" --train_data_meta "$DIR/meta.json" --train_data_dir "$DIR" --train_mode "$MODE" \
      --image_sample_size "$S" --enable_bucket -j 1 --out "$DIR/out.qie" --log_level warn --progress=false 2>"$DIR/qie.err"
  read -r qwall qusr qsys <"$DIR/time"
  rm -f "$DIR/out.qie"
  read -r ref_ips ref_wall < <("${PIN[@]}" python3 "$DIR/ref.py" "$DIR" "$N" "$S" "$MODE")
  base=0
  if [ -n "${BENCH_BASE_BIN:-}" ]; then
    /usr/bin/time -f "%e %U %S" -o "$DIR/time" "${PIN[@]}" \
      "$BENCH_BASE_BIN" --train_data_meta "$DIR/meta.json" --train_data_dir "$DIR" --train_mode "$MODE" \
        --image_sample_size "$S" --enable_bucket -j 1 --out "$DIR/out.qie" --log_level warn --progress=false 2>"$DIR/base.err"
    read -r bwall busr bsys <"$DIR/time"
    rm -f "$DIR/out.qie"
    base=$(python3 -c "print(f'{$N / ($busr + $bsys):.2f}')")
  fi
  python3 -c "print(f'{$N / ($qusr + $qsys):.2f} {$N / $qwall:.2f} $ref_ips $ref_wall {$qusr:.2f} {$qsys:.2f} $base')" >>"$DIR/rates"
done
echo "bench-decode: $N x (1024^2 JPEG target + 1024^2 JPEG source), $(( bytes / 1024 / 1024 )) MiB, --image_sample_size $S, --train_mode $MODE, one core${PIN[*]:+ (${PIN[*]})}, $RUNS rounds"
python3 - "$DIR/rates" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
q, qw, r, rw = ([row[i] for row in rows] for i in range(4))
for i, row in enumerate(rows):
    print(f"  round {i}: qie {row[0]:6.2f} images/CPU-s (user {row[4]:.2f} s, sys {row[5]:.2f} s, wall {row[1]:.2f}/s)"
          f"   reference {row[2]:6.2f} images/CPU-s (wall {row[3]:.2f}/s)   {row[0] / row[2]:.2f}x"
          + (f"   base binary {row[6]:6.2f} images/CPU-s" if row[6] else ""))
med = statistics.median
print(f"  {'qie-decode -j1 (records to a file)':46s} best {max(q):6.2f}  median {med(q):6.2f} images/CPU-s (wall best {max(qw):.2f}/s)")
print(f"  {'reference (PIL + torch float path, 1 thread)':46s} best {max(r):6.2f}  median {med(r):6.2f} images/CPU-s (wall best {max(rw):.2f}/s)")
b = [row[6] for row in rows]
if any(b):
    print(f"  {'BENCH_BASE_BIN (the same work, another build)':46s} best {max(b):6.2f}  median {med(b):6.2f} images/CPU-s")
print(f"  speed-up: best/best {max(q) / max(r):.2f}x, median/median {med(q) / med(r):.2f}x (goal >= 2x)")
EOF
