//! Inference masks: [`proposal_mask`] (top abnormality, METHOD.md §4), [`random_mask`] and
//! [`blockwise_mask`] (the paper's ablations), and [`downsample_max`] to bring the 28x28
//! proposal map to the ViT grid.

use super::super::PATCHES;
use super::placement::blockwise_fill;
use super::{count_for, mask_count};
use crate::rng::Rng;

/// Proposal masking (METHOD.md §4): the `round(ratio * n)` patches of highest abnormality
/// (`n = abnormality.len()`, 196 on the ViT grid). Ties go to the lower index (`-0.0` ties
/// with `+0.0`, as in the GPU's `topk_mask`); NaN ranks below every number.
pub fn proposal_mask(abnormality: &[f32], ratio: f32) -> Vec<bool> {
    let n = abnormality.len();
    let mut order: Vec<usize> = (0..n).collect();
    // `total_cmp` orders -0.0 below +0.0; adding +0.0 turns -0.0 into +0.0 (and nothing else).
    let key = |i: usize| abnormality[i] + 0.0;
    order.sort_by(|&a, &b| {
        let (va, vb) = (key(a), key(b));
        // Descending value with NaN last; then ascending index.
        match (va.is_nan(), vb.is_nan()) {
            (false, false) => vb.total_cmp(&va),
            (a_nan, b_nan) => a_nan.cmp(&b_nan),
        }
        .then(a.cmp(&b))
    });
    let mut mask = vec![false; n];
    for &i in &order[..count_for(ratio, n)] {
        mask[i] = true;
    }
    mask
}

/// [`mask_count`]`(ratio)` patches chosen uniformly without replacement (inference ablation).
pub fn random_mask(ratio: f32, rng: &mut Rng) -> Vec<bool> {
    let mut order: Vec<usize> = (0..PATCHES).collect();
    rng.shuffle(&mut order);
    let mut mask = vec![false; PATCHES];
    for &i in &order[..mask_count(ratio)] {
        mask[i] = true;
    }
    mask
}

/// [`mask_count`]`(ratio)` patches in uniform blocks (Algorithm 1; inference ablation).
pub fn blockwise_mask(ratio: f32, rng: &mut Rng) -> Vec<bool> {
    blockwise_fill(None, None, mask_count(ratio), rng).0
}

/// Max-pools a `from x from` map (row-major) to `to x to`: output cell `(i, j)` is the max over
/// source rows `[floor(i*from/to), ceil((i+1)*from/to))` and likewise for columns (windows
/// overlap when `to` does not divide `from`). NaN values are ignored unless the whole window
/// is NaN. Brings the 28x28 proposal abnormality to the 14x14 ViT grid.
///
/// Panics when `values.len() != from * from` or `to == 0`.
pub fn downsample_max(values: &[f32], from: usize, to: usize) -> Vec<f32> {
    assert_eq!(
        values.len(),
        from * from,
        "downsample_max: not a {from}x{from} map"
    );
    assert!(to > 0, "downsample_max: empty target grid");
    let window = |i: usize| (i * from / to, ((i + 1) * from).div_ceil(to));
    let mut out = Vec::with_capacity(to * to);
    for i in 0..to {
        let (r0, r1) = window(i);
        for j in 0..to {
            let (c0, c1) = window(j);
            let mut best = f32::NAN;
            for r in r0..r1 {
                for &v in &values[r * from + c0..r * from + c1] {
                    best = best.max(v); // f32::max ignores a NaN operand
                }
            }
            out.push(best);
        }
    }
    out
}
