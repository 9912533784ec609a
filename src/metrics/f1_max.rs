//! F1-max: the best F1 score over all thresholds.
//!
//! Definition: for a threshold `t`, predict "anomalous" for every score `>= t`; with `TP`, `FP`
//! the positives/negatives admitted and `P` all positives,
//! `F1(t) = 2 precision recall / (precision + recall) = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)`.
//! `F1-max = max over t of F1(t)`. Only thresholds equal to a score matter (F1 is constant
//! between them), and a threshold admits a whole tie group at once. A threshold above every
//! score admits nothing and gives F1 = 0, so the result is in `[0, 1]`.
//!
//! The field reports this at image level and pixel level. It picks its threshold with the test
//! labels, so it is an optimistic *reported* metric only: nothing may use the maximising
//! threshold to set a deployment threshold (which is why this function does not return it).

use super::sorted::{sorted_with_labels, tie_groups};
use crate::error::{Error, Result};

/// The maximum F1 over all thresholds "score >= t" of `scores` against `labels`
/// (`true` = anomalous). Errors when the lengths differ, a score is NaN, or there is no
/// positive (F1 would be 0 for every threshold). A reported metric only — see the module docs.
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Result<f64> {
    let (sorted, positives) = sorted_with_labels(scores, labels, "f1_max")?;
    if positives == 0 {
        return Err(Error::invalid("f1_max: no positive label"));
    }
    // Lower the threshold one tie group at a time, from the highest score down.
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best = 0.0f64;
    for (len, p) in tie_groups(&sorted).rev() {
        tp += p;
        fp += len - p;
        let f1 = (2 * tp) as f64 / (tp + fp + positives) as f64;
        best = best.max(f1);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: bool = false;
    const T: bool = true;

    #[test]
    fn hand_cases() {
        // P = 3. Thresholds from the top (TP, FP -> 2TP/(TP+FP+3)):
        // 0.9 (1,0) 2/4; 0.8 (1,1) 2/5; 0.7 (2,1) 4/6; 0.6 (3,1) 6/7; 0.5 (3,2) 6/8.
        let f = f1_max(&[0.9, 0.8, 0.7, 0.6, 0.5], &[T, F, T, T, F]).unwrap();
        assert!((f - 6.0 / 7.0).abs() < 1e-15);
        // Perfect separation -> 1; all negatives above all positives -> admit all: 2P/(N+2P).
        assert_eq!(f1_max(&[0.9, 0.8, 0.1], &[T, T, F]).unwrap(), 1.0);
        let f = f1_max(&[0.1, 0.2, 0.9, 0.8], &[T, T, F, F]).unwrap();
        assert!((f - 4.0 / 6.0).abs() < 1e-15);
        // Only positives: threshold at the lowest score admits all -> 1.
        assert_eq!(f1_max(&[0.3, 0.1], &[T, T]).unwrap(), 1.0);
    }

    #[test]
    fn ties() {
        // All tied: the only non-empty prediction admits all: TP 1, FP 2 -> 2/(1+2+1) = 0.5.
        assert_eq!(f1_max(&[0.5, 0.5, 0.5], &[T, F, F]).unwrap(), 0.5);
        // A tie across classes cannot be split: 0.8 admits (1,1) -> 2/4; 0.3 admits (2,1) -> 4/5.
        let f = f1_max(&[0.8, 0.8, 0.3], &[T, F, T]).unwrap();
        assert!((f - 0.8).abs() < 1e-15);
        // Without the tie the top positive alone gives 2/(1+0+2) = 2/3 < 0.8: still 0.8.
        let f = f1_max(&[0.9, 0.8, 0.3], &[T, F, T]).unwrap();
        assert!((f - 0.8).abs() < 1e-15);
    }

    #[test]
    fn errors() {
        assert!(f1_max(&[0.1, 0.2], &[F, F]).is_err());
        assert!(f1_max(&[0.1, 0.2], &[T]).is_err());
        assert!(f1_max(&[], &[]).is_err());
        assert!(f1_max(&[f32::NAN, 0.2], &[T, F]).is_err());
    }
}
