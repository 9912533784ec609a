#!/usr/bin/env bash
# The GPU check, run on the GPU machine from the binaries of scripts/device_kit.sh (no cargo,
# no network), in well under 8 minutes. Writes ONE results file, $OUT/device_results.md
# (./device-results/ when $OUT is unset), plus the raw logs beside it:
#   1. every CUDA parity test (kernels vs CPU references, ViT end to end vs the CPU model) and
#      the Detector end to end, CPU vs CUDA (bin/cuda_e2e);
#   2. kernel timings (criterion: bin/cuda_kernels);
#   3. `pmad inspect` images/s at batch 1, 64 and 256: --device cuda in f32 and in bf16
#      (--precision bf16: tensor-core GEMMs), and cpu; the host<->device bytes per image and
#      each GPU run's image scores against the CPU's;
#   4. the same operations in PyTorch on that machine (SDPA attention, cdist + argmin, the
#      same ViT forward), side by side with 2 as ratios (scripts/device_torch.py).
# PMAD_REQUIRE_GPU=1 (exported here unless already set): a CUDA test or bench that finds no
# usable GPU fails instead of printing "skipped", and the script then exits non-zero; a GPU
# machine whose driver or libraries cannot be used must not pass as green. A dry run on a
# machine without a GPU: `PMAD_REQUIRE_GPU=0 bash scripts/device_check.sh` (the CUDA parts
# report "skipped" and the PyTorch part runs on the CPU with small shapes).
set -uo pipefail
export PMAD_REQUIRE_GPU="${PMAD_REQUIRE_GPU:-1}"
failed=0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="${KIT:-$ROOT/device-kit}"
OUTDIR="${OUT:-$ROOT/device-results}"
mkdir -p "$OUTDIR"
RES="$OUTDIR/device_results.md"
[ -x "$KIT/bin/pmad" ] || { echo "no $KIT/bin/pmad: run scripts/device_kit.sh first" >&2; exit 2; }
W="$KIT/weights/efficientnet_lite0.safetensors"
export PMAD_WEIGHTS_DIR="$KIT/weights"   # the parity test and bench of the GPU backbone read it

# cuBLAS for cudarc: the system's, or the one PyTorch's wheels bring.
extra=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(sp, "nvidia", "*", "lib")):
        dirs.add(lib)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64:${extra}"

{
    echo "# pmad device check"
    echo
    echo "- date: $(date -u +%FT%TZ); kit commit: $(cat "$KIT/commit" 2>/dev/null || echo '?')"
    echo "- machine: $(nproc) cores; GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
    echo
} > "$RES"

section() { printf '\n## %s\n\n```\n' "$1" >> "$RES"; }
endsection() { printf '```\n' >> "$RES"; }

# 1. Parity.
section "1. parity tests (bin/cuda_parity --test-threads 1 --nocapture)"
t0=$(date +%s)
timeout 180 "$KIT/bin/cuda_parity" --test-threads 1 --nocapture > "$OUTDIR/parity.log" 2>&1
rc=$?; [ "$rc" = 0 ] || failed=1
echo "exit status $rc in $(( $(date +%s) - t0 )) s" >> "$RES"
grep -E "^(test |ok |skipped|.*: n=|.*FAILED|.*panicked|test result)" "$OUTDIR/parity.log" >> "$RES"
# Every op of the backend seam, CudaOps vs CpuOps.
timeout 60 "$KIT/bin/seam_parity" --test-threads 1 --nocapture > "$OUTDIR/seam.log" 2>&1
rc=$?; [ "$rc" = 0 ] || failed=1
echo "seam_parity: exit status $rc" >> "$RES"
grep -E "^(test |skipped|.*: n=|.*FAILED|.*panicked|test result)" "$OUTDIR/seam.log" >> "$RES"
# The whole Detector, CPU vs CUDA (scores, maps, verdicts): what CI runs on the emulator.
t0=$(date +%s)
PMAD_TEST_TMPDIR="$OUTDIR/e2e-tmp" timeout 120 "$KIT/bin/cuda_e2e" --test-threads 1 --nocapture > "$OUTDIR/e2e.log" 2>&1
rc=$?; [ "$rc" = 0 ] || failed=1
echo "cuda_e2e: exit status $rc in $(( $(date +%s) - t0 )) s" >> "$RES"
grep -E "^(test |device:|skipped|.*largest|.*max|.*FAILED|.*panicked|test result)" "$OUTDIR/e2e.log" >> "$RES"
endsection

# 2. Kernel timings.
section "2. kernel timings (criterion; time = [low estimate high] per call)"
export CRITERION_HOME="$OUTDIR/criterion"
timeout 240 "$KIT/bin/cuda_kernels" --bench > "$OUTDIR/kernels.log" 2>&1
rc=$?; [ "$rc" = 0 ] || failed=1
echo "exit status $rc" >> "$RES"
grep -E "^[a-z_]+/|time:|thrpt:|skipped|panicked|PMAD_REQUIRE_GPU" "$OUTDIR/kernels.log" >> "$RES"
endsection

# 3. Inspect throughput on regenerated synthetic images.
section "3. pmad inspect images/s (whole command: PNG decode + resize on the CPU; the rest device-resident) and host<->device bytes per image"
data="$OUTDIR/synth"
rm -rf "$data"
# shellcheck disable=SC2046
"$KIT/bin/pmad" synth --out "$data" $(cat "$KIT/synth_args") > /dev/null 2>&1 \
    || echo "pmad synth failed" >> "$RES"
imgs=("$data"/synth_wood/test/*/)
for run in cuda:f32 cuda:bf16 cpu:f32; do
    dev=${run%:*}; prec=${run#*:}
    for b in 1 64 256; do
        log="$OUTDIR/inspect_${dev}_${prec}_b$b"
        timeout 120 "$KIT/bin/pmad" inspect --model "$KIT/model" --class synth_wood --weights "$W" \
            --score product --device "$dev" --precision "$prec" --batch "$b" --timings "${imgs[@]}" \
            > "$log.jsonl" 2> "$log.log"
        echo "[$dev $prec batch $b, exit $?] $(grep -E 'images/s|B/image' "$log.log" | tr '\n' ' ')" >> "$RES"
    done
done
for prec in f32 bf16; do
    [ -s "$OUTDIR/inspect_cuda_${prec}_b64.jsonl" ] || continue
    python3 - "$prec" "$OUTDIR/inspect_cuda_${prec}_b64.jsonl" "$OUTDIR/inspect_cpu_f32_b64.jsonl" >> "$RES" <<'PY'
import json, sys
g = [json.loads(l)["score"] for l in open(sys.argv[2])]
c = [json.loads(l)["score"] for l in open(sys.argv[3])]
d = max(abs(a - b) / max(abs(b), 1.0) for a, b in zip(g, c)) if g and len(g) == len(c) else float("nan")
print(f"image scores cuda {sys.argv[1]} vs cpu f32: {len(g)} images, max relative difference {d:.2e}")
PY
done
endsection

# 4. PyTorch side by side.
section "4. PyTorch on this machine vs pmad's kernels"
timeout 200 python3 "$ROOT/scripts/device_torch.py" --criterion "$OUTDIR/criterion" >> "$RES" 2> "$OUTDIR/torch.log"
echo "exit status $?" >> "$RES"
endsection
echo "results: $RES"
cat "$RES"
[ "$failed" = 0 ] || echo "device check FAILED (parity or kernel bench; PMAD_REQUIRE_GPU=$PMAD_REQUIRE_GPU)" >&2
exit "$failed"
