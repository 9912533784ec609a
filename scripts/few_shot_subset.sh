#!/usr/bin/env bash
# A few-shot copy of an MVTec-layout dataset root, made of symlinks: each class keeps N of its
# normal training images (evenly spaced in name order: images 0, T/N, 2T/N, ... of T, so the
# choice is fixed and looks at nothing but file names) and its whole test set and masks.
#
#   bash scripts/few_shot_subset.sh ../shared/data/real /tmp/real-10 10
#
# Used by docs/ACCURACY.md ("Few-shot registration") to measure classes with few normal
# images; the copy is disposable (rm -rf DST).
set -euo pipefail
src=$(cd "${1:?source root}" && pwd); dst=${2:?destination}; n=${3:?images per class}
[ -e "$dst" ] && { echo "few_shot_subset: $dst exists" >&2; exit 1; }
for d in "$src"/*/; do
    d=${d%/}; c=$(basename "$d")
    [ -d "$d/train/good" ] || continue
    mkdir -p "$dst/$c/train/good"
    mapfile -t imgs < <(ls "$d/train/good" | sort)
    t=${#imgs[@]}
    [ "$n" -le "$t" ] || { echo "few_shot_subset: $c has $t < $n training images" >&2; exit 1; }
    for ((i = 0; i < n; i++)); do
        f=${imgs[$((i * t / n))]}
        ln -s "$d/train/good/$f" "$dst/$c/train/good/$f"
    done
    ln -s "$d/test" "$dst/$c/test"
    [ -d "$d/ground_truth" ] && ln -s "$d/ground_truth" "$dst/$c/ground_truth"
done
echo "few_shot_subset: $dst ($n training images per class)"
