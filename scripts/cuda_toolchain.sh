#!/usr/bin/env bash
# Installs the CUDA compile toolchain pmad's `cuda` feature needs, as PyPI wheels, into a
# project-local folder (default: <repo>/.cuda-toolchain, override with PMAD_CUDA_TOOLCHAIN).
#
#   nvidia-cuda-nvrtc-cu12   libnvrtc.so.12 (CUDA C++ -> PTX; used by build.rs when no nvcc)
#   nvidia-cuda-nvcc-cu12    ptxas          (PTX -> SASS for sm_75..sm_90: registers/spills report)
#   nvidia-cuda-runtime-cu12 CUDA runtime headers (cuda_fp16.h, cuda_bf16.h, ...)
#   nvidia-cuda-cccl-cu12    CCCL headers (cuda/std/..., needed by the fp16/bf16 headers)
#
# Idempotent: when every expected file is already there it installs nothing.
# Uses pip's configured index; never names a host.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${PMAD_CUDA_TOOLCHAIN:-$ROOT/.cuda-toolchain}"
PY="${PYTHON:-python3}"

NVRTC="$DEST/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
PTXAS="$DEST/nvidia/cuda_nvcc/bin/ptxas"
RT_INC="$DEST/nvidia/cuda_runtime/include"
CCCL_INC="$DEST/nvidia/cuda_cccl/include"

have_all() {
    [[ -e "$NVRTC" && -x "$PTXAS" && -f "$RT_INC/cuda_fp16.h" && -d "$CCCL_INC" ]]
}

if have_all; then
    echo "cuda_toolchain: already installed in $DEST"
else
    echo "cuda_toolchain: installing CUDA 12.9 wheels into $DEST"
    mkdir -p "$DEST"
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$DEST" \
        "nvidia-cuda-nvrtc-cu12==12.9.86" \
        "nvidia-cuda-nvcc-cu12==12.9.86" \
        "nvidia-cuda-runtime-cu12==12.9.*" \
        "nvidia-cuda-cccl-cu12==12.9.*"
    # Some wheel versions ship ptxas without the executable bit.
    [[ -f "$PTXAS" ]] && chmod +x "$PTXAS"
fi

if ! have_all; then
    echo "cuda_toolchain: ERROR: install finished but expected files are missing:" >&2
    for f in "$NVRTC" "$PTXAS" "$RT_INC/cuda_fp16.h" "$CCCL_INC"; do
        [[ -e "$f" ]] || echo "  missing: $f" >&2
    done
    exit 1
fi

echo "libnvrtc.so.12: $NVRTC"
echo "ptxas:          $PTXAS"
echo "includes:       $RT_INC"
echo "                $CCCL_INC"
"$PTXAS" --version | tail -n 2
echo
echo "build.rs finds this folder by itself; to point it elsewhere set"
echo "  PMAD_NVRTC_LIB=<path to libnvrtc.so.12>  PMAD_PTXAS=<path to ptxas>  PMAD_CUDA_INCLUDE=<dir[:dir]>"
