#!/usr/bin/env bash
# The Python package's test (README "Python"; scripts/test.sh calls it):
# 1. builds the wheel with maturin (release; the workspace's target folder, so pmad itself
#    comes from the release build the other tests already made),
# 2. installs it with numpy and pytest into a fresh venv,
# 3. runs python/tests there (`pmad synth` data, create + register + inspect, the README blocks;
#    pmad.ray on a local Ray cluster inside a loopback-only network namespace).
# Needs python3 (with venv) and PyPI for maturin, numpy, pytest and the wheel's `ray` extra
# (ray[data], pillow: ~150 MB of downloads), and `unshare` + `ip` for the Ray test.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d "${TMPDIR:-/tmp}/pmad-python.XXXXXX")
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet # the `pmad` binary the tests run for `pmad synth`
# Lints of the bindings crate (a workspace member that the main clippy run leaves out).
cargo clippy --release --quiet -p pmad-python -- -D warnings
python3 -m venv "$work/build"
"$work/build/bin/pip" install --quiet "maturin>=1.5,<2"
"$work/build/bin/maturin" build --release --quiet --manifest-path python/Cargo.toml \
  --interpreter "$work/build/bin/python" --out "$work/wheels"
python3 -m venv "$work/venv"
wheel=$(ls "$work"/wheels/pmad-*.whl)
"$work/venv/bin/pip" install --quiet "$wheel[ray]" pytest
# Run from outside the source tree so `import pmad` can only be the installed wheel.
cd "$work"
PMAD_BIN="$target/release/pmad" "$work/venv/bin/python" -m pytest -q -p no:cacheprovider \
  "$OLDPWD/python/tests"
