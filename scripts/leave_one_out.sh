#!/usr/bin/env bash
# Leave-one-class-out (cross-class) protocol over a dataset root in the MVTec-AD layout:
# for each class C, train a model on all the OTHER classes (prototypes + ProtoFlow), register C
# from its normal images only, evaluate C with each score (distance, flow, flow-nll).
#
#   bash scripts/leave_one_out.sh ROOT OUT [CLASS...]     (default: every class under ROOT)
#   e.g. bash scripts/leave_one_out.sh ../shared/data/real loo_out
#
# Writes OUT/<C>/model, OUT/<C>/eval_<score>.json and prints one table at the end.
# Extra `pmad train` options can be passed in PMAD_TRAIN_ARGS.
set -euo pipefail
root=${1:?dataset root}; out=${2:?output folder}; shift 2
pmad=${PMAD:-target/release/pmad}
[ -x "$pmad" ] || cargo build --release --quiet
if [ $# -gt 0 ]; then classes=("$@"); else
    mapfile -t classes < <(for d in "$root"/*/; do [ -d "$d/train/good" ] && basename "$d"; done)
fi
mkdir -p "$out"
for c in "${classes[@]}"; do
    seen=$(printf '%s\n' "${classes[@]}" | grep -vx "$c" | paste -sd, -)
    model="$out/$c/model"
    rm -rf "$model"; mkdir -p "$out/$c"
    echo "== $c: train on $seen"
    # shellcheck disable=SC2086
    /usr/bin/time -v "$pmad" train --data "$root" --classes "$seen" --out "$model" ${PMAD_TRAIN_ARGS:-} 2> "$out/$c/train.time"
    /usr/bin/time -v "$pmad" register --model "$model" --data "$root" --class "$c" 2> "$out/$c/register.time"
    for score in distance flow flow-nll; do
        /usr/bin/time -v "$pmad" eval --model "$model" --data "$root" --classes "$c" --score "$score" --json "$out/$c/eval_$score.json" 2> "$out/$c/eval_$score.time"
    done
done
python3 - "$out" "${classes[@]}" <<'PY'
import json, re, sys
out, classes = sys.argv[1], sys.argv[2:]
def peak(f):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f).read())
    w = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", open(f).read())
    return (int(m.group(1)) / 1024 if m else float('nan')), (w.group(1) if w else '?')
print(f"{'class':<16}{'score':<10}{'img_auroc':>10}{'pix_auroc':>10}{'aupro':>8}{'f1_max':>8}")
for c in classes:
    for s in ("distance", "flow", "flow-nll"):
        r = json.load(open(f"{out}/{c}/eval_{s}.json"))["classes"][c]
        print(f"{c:<16}{s:<10}{r['image_auroc']:>10.3f}{r['pixel_auroc']:>10.3f}{r['aupro']:>8.3f}{r['f1_max']:>8.3f}")
print("\nwall time / peak RSS (MiB):")
for c in classes:
    parts = []
    for step in ("train", "register", "eval_distance", "eval_flow", "eval_flow-nll"):
        mib, wall = peak(f"{out}/{c}/{step}.time")
        parts.append(f"{step} {wall} {mib:.0f}")
    print(f"  {c}: " + ", ".join(parts))
PY
