#!/usr/bin/env bash
# bench_decode_image.sh: per-core speed of qie-decode's pixel core (image.c + resample.c)
# against the Python reference doing the same work (PIL decode, torch float bilinear-aa, PIL
# LANCZOS), one thread each, on this machine.
#
#   target: 1024x1024 JPEG q90 4:2:0 -> RGB -> f32 CHW / 255 -> bilinear-aa to 1328x1328 (the
#           square bucket at --image_sample_size 1328) and to 768x768 (a downscale)
#   source: 1536x1024 JPEG q90 -> RGB -> LANCZOS to 1248x832 (calculate_dimensions(1024*1024,
#           1.5), the Edit Plus VAE size) and 1024x1024 -> 1024x1024 is a copy, so not run
#
# The test images are synthetic (gradients + shapes + noise, ~2-3 bpp): re-run on real data.
# Times are CPU seconds of the one process (best of 3 means), so other load on a shared
# machine counts only through caches. BUILD picks the build folder (default build-dec).
# Usage: scripts/bench_decode_image.sh [iters]   (from the repository root)
set -euo pipefail
iters=${1:-30}
B=${BUILD:-build-dec}
make --no-print-directory BUILD=$B $B/lib/libqie_decode.a $B/lib/libqie.a >/dev/null
PKGS="libturbojpeg spng libwebp libwebpdemux libavformat libavcodec libswscale libavutil"
mkdir -p $B/bench
gcc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Icommon -Istages \
  $(pkg-config --cflags $PKGS) tests/bench/bench_decode_image.c -o $B/bench/bench_decode_image \
  $B/lib/libqie_decode.a $B/lib/libqie.a $(pkg-config --libs $PKGS) -lm

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PIL_PY=${PIL_PYTHON:-/usr/bin/python3}      # Debian Pillow 9.4 (the reference's decode libs)
TORCH_PY=${TORCH_PYTHON:-python3}           # any python with torch + Pillow
"$PIL_PY" - "$tmp" <<'PY'
import sys, numpy as np
from PIL import Image
def synth(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / (w - 1); g = 255 * y / (h - 1); b = 127 + 120 * np.sin(x / 23.0 + y / 37.0)
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.3) ** 2
    r = np.where(disc, 250, r); g = np.where(disc, 20, g)
    b = np.where((x.astype(int) // 61) % 2 == 0, b, 255 - b)
    img = np.stack([r, g, b], -1) + rng.normal(0, 5, (h, w, 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))
synth(1024, 1024, 1).save(sys.argv[1] + "/t1024.jpg", quality=90, subsampling=2)
synth(1536, 1024, 2).save(sys.argv[1] + "/s1536.jpg", quality=90, subsampling=2)
PY
for f in t1024 s1536; do
  n=$(stat -c %s "$tmp/$f.jpg"); echo "$f.jpg: $n bytes"
done
$B/bench/bench_decode_image --check 200   # the AVX2 loops give the portable loops' bytes
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); one thread"
taskset -c ${BENCH_CPU:-1} $B/bench/bench_decode_image "$tmp/t1024.jpg" 1328 1328 "$tmp/s1536.jpg" 1248 832 "$iters"
taskset -c ${BENCH_CPU:-1} $B/bench/bench_decode_image "$tmp/t1024.jpg" 768 768 "$tmp/s1536.jpg" 1248 832 "$iters" | sed -n 2p
# the same with the portable resize loops (what qie ran before the AVX2 loops): "Cp" rows
BENCH_PORTABLE=1 taskset -c ${BENCH_CPU:-1} $B/bench/bench_decode_image "$tmp/t1024.jpg" 1328 1328 "$tmp/s1536.jpg" 1248 832 "$iters" | sed -n '2,4p'
BENCH_PORTABLE=1 taskset -c ${BENCH_CPU:-1} $B/bench/bench_decode_image "$tmp/t1024.jpg" 768 768 "$tmp/s1536.jpg" 1248 832 "$iters" | sed -n 2p

cat > "$tmp/ref.py" <<'PY'
import sys, time
import numpy as np
from PIL import Image
import PIL
d, iters = sys.argv[1], int(sys.argv[2])
try:
    import torch, torch.nn.functional as F
    torch.set_num_threads(1)
except ImportError:
    torch = None
def best(fn):
    fn(); b = 1e30
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(iters): fn()
        b = min(b, (time.process_time() - t0) / iters)
    return b
def dec(p): return Image.open(p).convert("RGB")
def target(size):
    def f():
        a = np.asarray(dec(d + "/t1024.jpg"))
        x = torch.from_numpy(a).permute(2, 0, 1).contiguous().float() / 255
        F.interpolate(x[None], size, mode="bilinear", antialias=True, align_corners=False)
    return f
def target_bf16(size):
    def f():
        a = np.asarray(dec(d + "/t1024.jpg"))
        x = torch.from_numpy(a).permute(2, 0, 1).contiguous().float() / 255
        y = F.interpolate(x[None], size, mode="bilinear", antialias=True, align_corners=False)
        ((y - 0.5) / 0.5).to(torch.bfloat16)
    return f
def source(): dec(d + "/s1536.jpg").resize((1248, 832), Image.LANCZOS)
tag = "Py  Pillow %s%s" % (PIL.__version__, (", torch " + torch.__version__) if torch else "")
rows = [("target decode only", lambda: dec(d + "/t1024.jpg"))]
if torch:
    rows += [("target decode + f32 bilinear-aa -> 1328x1328", target((1328, 1328))),
             ("  same + normalise + bf16", target_bf16((1328, 1328))),
             ("target decode + f32 bilinear-aa -> 768x768", target((768, 768)))]
rows += [("source decode + LANCZOS u8 -> 1248x832", source)]
print(tag)
for name, fn in rows:
    t = best(fn)
    print("Py  %-44s %7.2f ms  %7.1f images/s/core" % (name, t * 1e3, 1 / t))
PY
taskset -c ${BENCH_CPU:-1} "$TORCH_PY" "$tmp/ref.py" "$tmp" "$iters"
taskset -c ${BENCH_CPU:-1} "$PIL_PY" "$tmp/ref.py" "$tmp" "$iters"
