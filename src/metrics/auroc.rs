//! Area under the ROC curve.
//!
//! Definition: with `P` positives and `N` negatives,
//! `AUROC = (1 / (P N)) * sum over (positive i, negative j) of [s_i > s_j] + 1/2 [s_i == s_j]`,
//! the probability that a random positive scores above a random negative, ties counting 1/2.
//! This is the Mann–Whitney U statistic over `P N`, and equals the area under the ROC curve
//! (TPR against FPR) drawn with one step per distinct score — a tie group holding both classes
//! is one diagonal segment, whose trapezoid is exactly the 1/2 above. It is what scikit-learn's
//! `roc_auc_score` returns.
//!
//! Computation: sort once; walk the tie groups from the lowest score up, keeping the number of
//! negatives already passed (`below`). A group with `p` positives and `q` negatives adds
//! `p * below` wins and `p * q` half-wins. Everything is counted in integers (`2U` exactly) and
//! divided once at the end, so the result is exact up to one rounding.

use super::sorted::{sorted_with_labels, tie_groups};
use crate::error::{Error, Result};

/// Area under the ROC curve of `scores` (higher = more anomalous) against `labels`
/// (`true` = anomalous), ties counted 1/2. Errors when the lengths differ, a score is NaN, or
/// only one class is present. O(n log n): one parallel sort of all values.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Result<f64> {
    let (sorted, positives) = sorted_with_labels(scores, labels, "auroc")?;
    let negatives = sorted.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(Error::invalid(format!(
            "auroc: needs both classes, got {positives} positives and {negatives} negatives"
        )));
    }
    // twice_u = 2 U = sum over groups of 2 p below + p q (an integer; u128 cannot overflow).
    let mut twice_u: u128 = 0;
    let mut below: u128 = 0;
    for (len, p) in tie_groups(&sorted) {
        let (p, q) = (p as u128, (len - p) as u128);
        twice_u += 2 * p * below + p * q;
        below += q;
    }
    let pairs = positives as f64 * negatives as f64;
    Ok(twice_u as f64 / (2.0 * pairs))
}

/// The ROC curve of `scores` against `labels` as `(fpr, tpr)` points: `(0, 0)` first, then
/// one point per tie group from the highest score down, ending at `(1, 1)` (a tie group holding
/// both classes is one diagonal segment, as in [`auroc`]). Same inputs and errors as [`auroc`].
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Result<Vec<(f64, f64)>> {
    let (sorted, positives) = sorted_with_labels(scores, labels, "roc_curve")?;
    let negatives = sorted.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(Error::invalid(format!(
            "roc_curve: needs both classes, got {positives} positives and {negatives} negatives"
        )));
    }
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut curve = vec![(0.0, 0.0)];
    for (len, p) in tie_groups(&sorted).rev() {
        tp += p;
        fp += len - p;
        curve.push((fp as f64 / negatives as f64, tp as f64 / positives as f64));
    }
    Ok(curve)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: bool = false;
    const T: bool = true;

    #[test]
    fn hand_cases() {
        // Pairs (pos, neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4.
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T]).unwrap(), 0.75);
        // Perfect and inverted rankings.
        assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.4], &[F, F, T, T]).unwrap(), 1.0);
        assert_eq!(auroc(&[0.4, 0.3, 0.2, 0.1], &[F, F, T, T]).unwrap(), 0.0);
        // Class order in the input does not matter.
        assert_eq!(auroc(&[0.9, 0.1, 0.8, 0.2], &[T, F, T, F]).unwrap(), 1.0);
    }

    #[test]
    fn ties() {
        // All tied: every pair counts 1/2.
        assert_eq!(auroc(&[0.3; 5], &[T, F, F, T, F]).unwrap(), 0.5);
        // One tie across classes: pos 0.5 vs neg 0.1 wins, vs neg 0.5 half, pos 0.9 wins twice:
        // (1 + 1/2 + 2) / 4 = 0.875.
        assert_eq!(auroc(&[0.1, 0.5, 0.5, 0.9], &[F, F, T, T]).unwrap(), 0.875);
        // Ties within one class change nothing: pos {0.7, 0.7} above neg {0.2, 0.2}.
        assert_eq!(auroc(&[0.2, 0.7, 0.2, 0.7], &[F, T, F, T]).unwrap(), 1.0);
        // -0.0 and +0.0 are one score: one tied pair -> 1/2.
        assert_eq!(auroc(&[-0.0, 0.0], &[T, F]).unwrap(), 0.5);
        // Mixed: pos {1, 2, 2}, neg {0, 2}: pos 1 wins 1; each pos 2 wins 1 + half 1 -> 1.5 each.
        // (1 + 1.5 + 1.5) / 6 = 2/3.
        let a = auroc(&[1.0, 2.0, 2.0, 0.0, 2.0], &[T, T, T, F, F]).unwrap();
        assert!((a - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn negative_and_infinite_scores() {
        let s = [f32::NEG_INFINITY, -3.0, -1.0, f32::INFINITY];
        assert_eq!(auroc(&s, &[F, F, T, T]).unwrap(), 1.0);
        assert_eq!(auroc(&s, &[T, F, T, F]).unwrap(), 0.25);
    }

    #[test]
    fn roc_curve_steps_through_tie_groups() {
        // From the top: 0.8 (T) -> (0, 1/2); 0.5 (T and F tied) -> (1/2, 1); 0.1 (F) -> (1, 1).
        let c = roc_curve(&[0.1, 0.5, 0.5, 0.8], &[F, F, T, T]).unwrap();
        assert_eq!(c, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        assert!(roc_curve(&[0.1, 0.2], &[T, T]).is_err());
    }

    #[test]
    fn errors() {
        assert!(auroc(&[0.1, 0.2], &[T, T]).is_err());
        assert!(auroc(&[0.1, 0.2], &[F, F]).is_err());
        assert!(auroc(&[0.1, 0.2], &[T]).is_err());
        assert!(auroc(&[], &[]).is_err());
        assert!(auroc(&[0.1, f32::NAN], &[T, F]).is_err());
    }
}
