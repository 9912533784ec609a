#!/usr/bin/env bash
# Leave-one-class-out (cross-class) protocol over a dataset root in the MVTec-AD layout:
# for each class C, train a model on all the OTHER classes (prototypes + ProtoFlow), register C
# from its normal images only, evaluate C with each score: the proposal stage (distance, flow,
# flow-nll), the full two-stage PMAD (product), entropy only, and product with random
# inference masking (the paper's ablation; "product@random").
#
#   bash scripts/leave_one_out.sh ROOT OUT [CLASS...]     (default: every class under ROOT)
#   e.g. bash scripts/leave_one_out.sh ../shared/data/real loo_out
#
# Writes OUT/<C>/model, OUT/<C>/eval_<score>.json and prints one table at the end.
# Extra `pmad train` options can be passed in PMAD_TRAIN_ARGS (e.g. "--preset small
# --vit-epochs 8", or "--skip tokenizer,vit" for the proposal stage only); the evaluated
# scores in PMAD_SCORES (default below; entries SCORE or SCORE@MASK). PMAD_FOLDS="A B" runs only
# those folds (each still trains on every other class given).
set -euo pipefail
root=${1:?dataset root}; out=${2:?output folder}; shift 2
pmad=${PMAD:-target/release/pmad}
[ -x "$pmad" ] || cargo build --release --quiet
if [ $# -gt 0 ]; then classes=("$@"); else
    mapfile -t classes < <(for d in "$root"/*/; do [ -d "$d/train/good" ] && basename "$d"; done)
fi
mkdir -p "$out"
read -r -a folds <<< "${PMAD_FOLDS:-${classes[*]}}"
for c in "${folds[@]}"; do
    seen=$(printf '%s\n' "${classes[@]}" | grep -vx "$c" | paste -sd, -)
    model="$out/$c/model"
    rm -rf "$model"; mkdir -p "$out/$c"
    echo "== $c: train on $seen"
    # shellcheck disable=SC2086
    /usr/bin/time -v "$pmad" train --data "$root" --classes "$seen" --out "$model" ${PMAD_TRAIN_ARGS:-} 2> "$out/$c/train.time"
    /usr/bin/time -v "$pmad" register --model "$model" --data "$root" --class "$c" 2> "$out/$c/register.time"
    for spec in ${PMAD_SCORES:-distance flow flow-nll product entropy product@random}; do
        score=${spec%@*}; mask=proposal; [ "$spec" != "$score" ] && mask=${spec#*@}
        /usr/bin/time -v "$pmad" eval --model "$model" --data "$root" --classes "$c" --score "$score" --inference-mask "$mask" --json "$out/$c/eval_$spec.json" 2> "$out/$c/eval_$spec.time"
    done
done
PMAD_SCORES=${PMAD_SCORES:-distance flow flow-nll product entropy product@random} python3 - "$out" "${classes[@]}" <<'PY'
import json, os, re, sys
out, classes = sys.argv[1], sys.argv[2:]
classes = [c for c in classes if os.path.exists(f"{out}/{c}/eval_{os.environ['PMAD_SCORES'].split()[0]}.json")]
scores = os.environ["PMAD_SCORES"].split()
def peak(f):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f).read())
    w = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", open(f).read())
    return (int(m.group(1)) / 1024 if m else float('nan')), (w.group(1) if w else '?')
def f(v):  # a metric, or '-' when absent (null: no masks; NaN: rates not computed)
    return '-' if v is None or v != v else f"{v:.3f}"
print(f"{'class':<16}{'score':<16}{'img_auroc':>10}{'pix_auroc':>10}{'aupro':>8}{'f1_max':>8}{'far':>7}{'det':>7}")
for c in classes:
    for s in scores:
        r = json.load(open(f"{out}/{c}/eval_{s}.json"))["classes"][c]
        print(f"{c:<16}{s:<16}{f(r['image_auroc']):>10}{f(r['pixel_auroc']):>10}{f(r['aupro']):>8}"
              f"{f(r['f1_max']):>8}{f(r.get('false_alarm_rate')):>7}{f(r.get('detection_rate')):>7}")
print("\nwall time / peak RSS (MiB):")
for c in classes:
    parts = []
    for step in ["train", "register"] + [f"eval_{s}" for s in scores]:
        mib, wall = peak(f"{out}/{c}/{step}.time")
        parts.append(f"{step} {wall} {mib:.0f}")
    print(f"  {c}: " + ", ".join(parts))
PY
