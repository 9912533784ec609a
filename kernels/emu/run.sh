#!/usr/bin/env bash
# Kernel logic check without a GPU: compiles kernels/*.cu as host C++ against cuda_emu.h (one
# thread per CUDA thread, real barriers and shuffles) and runs parity.py, which launches every
# kernel with the same grids as src/cuda/*.rs, through the same by-name, void**-argument launch
# the CUDA driver takes (gen_launch.py), and compares with numpy/scipy references.
# Everything is built under target/kernel-emu/ (numpy + scipy go into a venv there).
# Usage: bash kernels/emu/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EMU="$ROOT/kernels/emu"
OUT="$ROOT/target/kernel-emu"
mkdir -p "$OUT/k"

if [[ ! -x "$OUT/venv/bin/python" ]] || ! "$OUT/venv/bin/python" -c "import numpy, scipy" 2>/dev/null; then
    python3 -m venv "$OUT/venv"
    PIP_ROOT_USER_ACTION=ignore "$OUT/venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy scipy
fi

# The kernels, made host-compilable: PTX inline asm and `extern __shared__` have host stand-ins.
python3 - "$ROOT/kernels" "$OUT/k" <<'PY'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
for f in os.listdir(src):
    if not f.endswith(('.cu', '.cuh')):
        continue
    s = open(os.path.join(src, f)).read()
    s = s.replace('asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));', 'f = emu_f16(h);')
    s = s.replace('extern __shared__ unsigned long long topk_keys[];',
                  'unsigned long long* topk_keys = (unsigned long long*)emu_dyn_smem;')
    s = s.replace('#define PMAD_FULL_MASK', '#include "cuda_emu.h"\n#define PMAD_FULL_MASK', 1)
    out = f[:-3] + '.cpp' if f.endswith('.cu') else f
    open(os.path.join(dst, out), 'w').write(s)
PY

# One by-name entry point with cuLaunchKernel's argument convention (void** params), generated
# from the kernels' signatures.
python3 "$EMU/gen_launch.py" "$ROOT/kernels" "$OUT/k" > "$OUT/launch.cpp"
g++ -std=c++20 -O2 -fPIC -shared -pthread -w -I"$EMU" -I"$OUT" -o "$OUT/emu.so" "$OUT/launch.cpp"
exec "$OUT/venv/bin/python" "$EMU/parity.py" "$OUT/emu.so"
