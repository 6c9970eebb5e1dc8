#!/usr/bin/env bash
# scripts/bundle.sh BUILD OUT [NAME...]: gathers the executables of BUILD/bin, BUILD/tests-gpu and
# BUILD/bench (all of them, or just the NAMEs, looked up in those folders), plus the shared libraries they need that a GPU host may lack (everything
# but glibc, the C++ runtime and CUDA/NCCL), into OUT/ and OUT/lib/, debug info stripped.
# The binaries carry rpath $ORIGIN/lib, so OUT runs where our Debian packages are not installed.
# A GPU host rarely needs qie-decode, whose FFmpeg pulls in over 100 libraries: name the stages
# to keep the bundle small (e.g. for a device run: qie-parity qie-train qie-encode-vae).
set -euo pipefail
build=${1:-build}; out=${2:-$build/bundle}; shift $(( $# >= 2 ? 2 : $# ))
rm -rf "$out"; mkdir -p "$out/lib"
dirs=("$build/bin" "$build/tests-gpu" "$build/bench")
if [ $# -gt 0 ]; then
  for n in "$@"; do
    f=""; for d in "${dirs[@]}"; do [ -x "$d/$n" ] && f="$d/$n" && break; done
    [ -n "$f" ] || { echo "bundle: no executable '$n' in ${dirs[*]}" >&2; exit 1; }
    cp "$f" "$out/"
  done
else
  for d in "${dirs[@]}"; do for t in "$d"/*; do [ -x "$t" ] && [ -f "$t" ] && cp "$t" "$out/"; done; done
fi
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libnccl|libnvidia)'
for b in "$out"/*; do
  [ -f "$b" ] && [ -x "$b" ] || continue
  ldd "$b" | awk '/=> \//{print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    [ -e "$out/lib/$name" ] || cp -L "$path" "$out/lib/$name"
  done
done
strip --strip-debug "$out"/* "$out"/lib/* 2>/dev/null || true
echo "bundle: $(find "$out" -maxdepth 1 -type f | wc -l) executables, $(ls "$out/lib" | wc -l) libraries in $out ($(du -sh "$out" | cut -f1))"
