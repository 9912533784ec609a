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

# The kernels made host-compilable (PTX inline asm and `extern __shared__` get host stand-ins)
# and one by-name entry point with cuLaunchKernel's argument convention (void** params),
# generated from the kernels' signatures.
python3 "$EMU/gen_launch.py" "$ROOT/kernels" "$OUT"
g++ -std=c++20 -O2 -U_FORTIFY_SOURCE -fPIC -shared -pthread -w -I"$EMU" -I"$OUT" -o "$OUT/emu.so" "$OUT/launch.cpp"
exec "$OUT/venv/bin/python" "$EMU/parity.py" "$OUT/emu.so"
