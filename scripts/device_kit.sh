#!/usr/bin/env bash
# Builds, here, everything the GPU check needs into device-kit/ (git-ignored): the GPU
# machine has no cargo and no network. Then, on the GPU machine (the `device` tool runs a
# command in a copy of this tree; carry device-kit):
#     bash scripts/device_check.sh            # writes $OUT/device_results.md (or ./device-results/)
#
# Contents: bin/pmad (built with --features cuda, stripped), bin/cuda_parity (the parity test
# binary), bin/cuda_e2e (Detector CPU vs CUDA end to end), bin/seam_parity (every
# backend-seam op, CudaOps vs CpuOps), bin/cuda_kernels (the criterion bench binary), weights/ (the backbone), model/ (a
# `small`-preset model, 1 ViT epoch on synthetic classes, synth_wood registered: timing, not
# accuracy), and the seed of its synthetic data (regenerated there byte for byte by `pmad synth`).
# About 45 MiB; a few minutes on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KIT="$ROOT/device-kit"
rm -rf "$KIT"
mkdir -p "$KIT/bin" "$KIT/weights"
bash scripts/cuda_toolchain.sh
[ -f weights/efficientnet_lite0.safetensors ] || cargo run --release --quiet -- fetch-weights

# Path of the executable of target $1 among those cargo builds (it prints them as JSON).
executable() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}
cargo build --release --features cuda
cp target/release/pmad "$KIT/bin/pmad"
parity=$(cargo test --release --features cuda --test cuda_parity --no-run --message-format=json-render-diagnostics | executable cuda_parity)
e2e=$(cargo test --release --features cuda --test cuda_e2e --no-run --message-format=json-render-diagnostics | executable cuda_e2e)
seam=$(cargo test --release --features cuda --test seam_parity --no-run --message-format=json-render-diagnostics | executable seam_parity)
bench=$(cargo bench --features cuda --bench cuda_kernels --no-run --message-format=json-render-diagnostics | executable cuda_kernels)
cp "$parity" "$KIT/bin/cuda_parity"
cp "$e2e" "$KIT/bin/cuda_e2e"
cp "$seam" "$KIT/bin/seam_parity"
cp "$bench" "$KIT/bin/cuda_kernels"
strip "$KIT"/bin/*
cp weights/efficientnet_lite0.safetensors "$KIT/weights/"

# The model: small preset (the inference configuration users run), trained for one epoch.
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
synth_args="--classes 3 --seed 0 --test-good 64 --test-bad 64"
# shellcheck disable=SC2086
./target/release/pmad synth --out "$data/synth" $synth_args
./target/release/pmad train --data "$data/synth" --classes synth_fabric,synth_cap --out "$KIT/model" \
    --skip flow --preset small --vit-epochs 1 --vocab 1024 --weights "$KIT/weights/efficientnet_lite0.safetensors"
./target/release/pmad register --model "$KIT/model" --data "$data/synth" --class synth_wood \
    --weights "$KIT/weights/efficientnet_lite0.safetensors"
echo "$synth_args" > "$KIT/synth_args"
git rev-parse HEAD > "$KIT/commit" 2>/dev/null || true
du -sh "$KIT"
