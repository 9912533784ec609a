#!/usr/bin/env bash
# The table of accuracy levers of the proposal stage, one row per (variant, class): image
# AUROC, pixel AUROC, AUPRO, F1-max, and the verdicts at the calibrated threshold (false-alarm
# rate on test/good, detection rate on defects).
#
#   bash scripts/ablate.sh ROOT OUT [VARIANT...]       e.g. bash scripts/ablate.sh ../shared/data/real abl
#
# Every variant is a set of `pmad train` flags; each trains a proposal-only model (prototypes +
# thresholds, no flow or ViT) on every class under ROOT and evaluates each class on its test
# set. This is cross-class: the proposal stage's `distance` score of a class depends only on
# that class's own normal images (its bank and its thresholds), never on another class, so a
# class scored in this model scores exactly as in a model trained without it. Levers that
# train on the other classes (the flow, the ViT) need scripts/leave_one_out.sh instead.
# Nothing here reads a test label to set anything: each variant is a global setting, the same
# for every class, and the table is for choosing defaults (README: "How defaults are chosen").
set -euo pipefail
root=${1:?dataset root}; out=${2:?output folder}; shift 2
pmad=${PMAD:-target/release/pmad}
[ -x "$pmad" ] || cargo build --release --quiet
# name=train flags ("default" is today's defaults).
variants=(
    "default="
    "image-max=--image-score max"
    "image-top5%=--image-score top:0.05"
    "no-robust-floor=--threshold-robust-z 0"
    "today-before=--image-score max --threshold-robust-z 0"
    "coreset-25%=--coreset-ratio 0.25"
    "reweighted=--patch-score reweighted"
    "augment=--augment all"
    "inner-dw10=--taps blocks.4,blocks.10,blocks.10.dw:128"
    "inner-only=--taps blocks.4.dw:128,blocks.10.dw:128"
    "lite1-240=--backbone lite1 --input-size 240"
    "lite2-260=--backbone lite2 --input-size 260"
    "pool5=--pool 5"
    "per-image=--input-norm per-image"
)
[ $# -gt 0 ] && variants=("$@")
mapfile -t classes < <(for d in "$root"/*/; do [ -d "$d/train/good" ] && basename "$d"; done)
mkdir -p "$out"
for v in "${variants[@]}"; do
    name=${v%%=*}; flags=${v#*=}
    model="$out/$name/model"
    rm -rf "$model"; mkdir -p "$out/$name"
    echo "== $name: ${flags:-(defaults)}"
    # shellcheck disable=SC2086
    PMAD_PROGRESS=off "$pmad" train --data "$root" --classes "$(IFS=,; echo "${classes[*]}")" \
        --out "$model" --skip flow,tokenizer,vit $flags > "$out/$name/train.log"
    for c in "${classes[@]}"; do
        PMAD_PROGRESS=off "$pmad" eval --model "$model" --data "$root" --classes "$c" \
            --json "$out/$name/eval_$c.json" > /dev/null
    done
done
names=$(for v in "${variants[@]}"; do echo "${v%%=*}"; done)
python3 - "$out" "${classes[@]}" <<PY
import json, sys
out, classes = sys.argv[1], sys.argv[2:]
names = """$names""".split()
def f(v):  # a metric, or '-' when absent (null: no masks)
    return '-' if v is None or v != v else f"{v:.3f}"
cols = ['image_auroc', 'pixel_auroc', 'aupro', 'f1_max', 'false_alarm_rate', 'detection_rate']
print(f"{'variant':<18}{'class':<16}{'img_auroc':>10}{'pix_auroc':>10}{'aupro':>8}{'f1_max':>8}{'far':>7}{'det':>7}")
for n in names:
    for c in classes:
        r = json.load(open(f"{out}/{n}/eval_{c}.json"))["classes"][c]
        print(f"{n:<18}{c:<16}" + "".join(f"{f(r.get(k)):>{w}}" for k, w in zip(cols, [10, 10, 8, 8, 7, 7])))
    m = [json.load(open(f"{out}/{n}/eval_{c}.json"))["classes"][c]["image_auroc"] for c in classes]
    print(f"{n:<18}{'mean':<16}{sum(m) / len(m):>10.3f}")
PY
