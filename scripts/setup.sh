#!/usr/bin/env bash
# scripts/setup.sh: installs every Debian package qie's build and tests need. Idempotent: it
# installs only what is missing and says what it did. CUDA is used from /usr/local/cuda when
# present (make CUDA=1); nothing here installs it.
set -euo pipefail
pkgs=(
  build-essential pkg-config make
  libzmq3-dev libmsgpack-dev libcjson-dev liblmdb-dev lmdb-utils
  libturbojpeg0-dev libspng-dev libwebp-dev
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev
  clang libclang-rt-14-dev      # fuzz targets (libFuzzer) and sanitizer runtimes
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#pkgs[@]} packages already installed"
else
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: installed ${#missing[@]} packages"
fi
if [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA toolkit found: $(/usr/local/cuda/bin/nvcc --version | tail -1) (make CUDA=1 builds the GPU backend)"
else
  echo "setup: no CUDA toolkit at /usr/local/cuda: CPU build only"
fi
