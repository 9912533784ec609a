#!/usr/bin/env bash
# Load test of `pmad serve` on loopback (a benchmark, not a test): starts the server on a free
# port, runs examples/serve_load.rs at 1, 4, 16 and 64 concurrent clients for SECONDS each,
# each right after the in-process `inspect --batch 8` throughput on the same images, and
# `pmad inspect --batch 8 --timings` on the same images for reference; then SIGTERM.
#
#   bash scripts/serve_load.sh MODEL CLASS IMAGES_DIR [SECONDS] [CLIENTS]
#   e.g. bash scripts/serve_load.sh bottle-model bottle ../shared/data/real/bottle/test/good 30
#
# Server flags can be added with PMAD_SERVE_FLAGS="--max-batch 8 --max-wait-ms 5 --queue 64".
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,10p' "$0"
    exit 2
fi
MODEL=$1
CLASS=$2
IMAGES=$3
SECONDS_PER=${4:-10}
CLIENTS=${5:-1,4,16,64}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin pmad --example serve_load
TARGET=${CARGO_TARGET_DIR:-target}/release
PMAD=$TARGET/pmad

echo "== pmad inspect --batch 8 --timings (includes opening the model)"
"$PMAD" inspect --model "$MODEL" --class "$CLASS" --batch 8 --timings "$IMAGES" > /dev/null

LOG=$(mktemp)
# shellcheck disable=SC2086
"$PMAD" serve --model "$MODEL" --addr 127.0.0.1:0 ${PMAD_SERVE_FLAGS:-} > "$LOG" 2> "$LOG.err" &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; rm -f "$LOG" "$LOG.err"' EXIT
ADDR=
for _ in $(seq 1 600); do
    ADDR=$(sed -n 's/^pmad serve: listening on http:\/\///p' "$LOG")
    [ -n "$ADDR" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$LOG.err"; exit 1; }
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not start"; cat "$LOG.err"; exit 1; }
echo "== server $ADDR (pid $PID), ${SECONDS_PER}s per level, clients $CLIENTS"

"$TARGET/examples/serve_load" --addr "$ADDR" --model "$MODEL" --class "$CLASS" \
    --images "$IMAGES" --clients "$CLIENTS" --seconds "$SECONDS_PER" --pid "$PID"

kill -TERM "$PID"
STATUS=0
wait "$PID" || STATUS=$?
echo "== server exit status $STATUS after SIGTERM; its log:"
cat "$LOG.err"
