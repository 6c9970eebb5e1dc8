#!/usr/bin/env bash
# scripts/bundle.sh BUILD OUT: gathers BUILD/bin/* and the shared libraries they need that a
# GPU host may lack (everything but glibc, the C++ runtime and CUDA/NCCL) into OUT/ and OUT/lib/.
# The binaries carry rpath $ORIGIN/lib, so OUT runs where our Debian packages are not installed.
set -euo pipefail
build=${1:-build}; out=${2:-$build/bundle}
rm -rf "$out"; mkdir -p "$out/lib"
cp "$build"/bin/* "$out/"
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libnccl|libnvidia)'
for b in "$out"/*; do
  [ -f "$b" ] && [ -x "$b" ] || continue
  ldd "$b" | awk '/=> \//{print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    [ -e "$out/lib/$name" ] || cp -L "$path" "$out/lib/$name"
  done
done
echo "bundle: $(ls "$out" | grep -vc '^lib$') executables, $(ls "$out/lib" | wc -l) libraries in $out ($(du -sh "$out" | cut -f1))"
