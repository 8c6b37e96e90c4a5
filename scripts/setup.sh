#!/usr/bin/env bash
# Installs every Debian package that asl's build, tests, benchmarks and demo need. Idempotent; quiet when all is present.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas0-pthread libdnnl-dev
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev
  libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  python3 python3-torch python3-numpy
  zlib1g-dev
  libonnx-dev libprotobuf-dev
  libgloo-dev
  nodejs
  dataset-fashion-mnist
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# npm: part of some nodejs builds (NodeSource's), a separate Debian package otherwise.
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: done"
fi

# ONNX Runtime for the export tests and `make bench` (../shared/bench/ort_run.js): npm's onnxruntime-node
# ships the CPU library; its install script only fetches CUDA binaries, so it is skipped. Git-ignored folder.
ORT_VERSION=1.30.0
ORT_DIR="$(cd "$(dirname "$0")/.." && pwd)/.deps/ort"
if ! grep -qs "\"version\": \"$ORT_VERSION\"" "$ORT_DIR/node_modules/onnxruntime-node/package.json"; then
  echo "setup: npm install onnxruntime-node@$ORT_VERSION into $ORT_DIR"
  npm install --ignore-scripts --no-audit --no-fund --silent --prefix "$ORT_DIR" "onnxruntime-node@$ORT_VERSION" >/dev/null
fi
