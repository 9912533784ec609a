//! Sorting scores for the metrics: pack each (score, payload) into one `u64` whose integer order
//! is the score order, sort those integers (no comparator closure, no float comparisons), then
//! walk the runs of equal scores (tie groups).

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Maps an `f32` to a `u32` with the same order: for non-negative floats the IEEE bits already
/// sort as unsigned integers, so only the sign bit is set; negative floats sort in reverse, so
/// all their bits are flipped. `x + 0.0` turns `-0.0` into `+0.0` so the two zeros tie.
/// NaN must be rejected before (it would sort above +inf or below -inf).
pub(super) fn order_key(x: f32) -> u32 {
    let bits = (x + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// One sortable integer per pixel/image: the score's order key in the high 32 bits, a payload
/// (a label, a region id) in the low 32 bits. Equal scores have equal high halves.
pub(super) fn pack(score: f32, payload: u32) -> u64 {
    (u64::from(order_key(score)) << 32) | u64::from(payload)
}

/// The score part of a packed value: equal keys <=> equal scores.
pub(super) fn key(p: u64) -> u32 {
    (p >> 32) as u32
}

/// The payload part of a packed value.
pub(super) fn payload(p: u64) -> u32 {
    p as u32
}

/// Errors on a NaN score; `what` names the input in the message.
pub(super) fn check_no_nan(scores: &[f32], what: &str) -> Result<()> {
    match scores.par_iter().position_any(|s| s.is_nan()) {
        Some(i) => Err(Error::invalid(format!("{what}: score {i} is NaN"))),
        None => Ok(()),
    }
}

/// Checks `scores`/`labels` (same non-zero length, no NaN) and returns them packed as
/// `(score, label as 0/1)`, sorted by ascending score, with the number of positives.
pub(super) fn sorted_with_labels(
    scores: &[f32],
    labels: &[bool],
    what: &str,
) -> Result<(Vec<u64>, usize)> {
    if scores.len() != labels.len() {
        return Err(Error::invalid(format!(
            "{what}: {} scores but {} labels",
            scores.len(),
            labels.len()
        )));
    }
    if scores.is_empty() {
        return Err(Error::invalid(format!("{what}: no scores")));
    }
    check_no_nan(scores, what)?;
    let mut packed: Vec<u64> = scores
        .par_iter()
        .zip(labels.par_iter())
        .map(|(&s, &l)| pack(s, u32::from(l)))
        .collect();
    sort_by_score(&mut packed);
    let positives = labels.par_iter().filter(|&&l| l).count();
    Ok((packed, positives))
}

/// Sorts packed values by ascending score (sorting the whole `u64` sorts by its high half).
///
/// A plain integer sort on all cores (rayon's parallel pattern-defeating quicksort): 6.5M
/// values sort in well under a second on 2 cores. An LSD radix sort over the 32 key bits was
/// tried and was no faster on the development machines (its scatter passes are bound by
/// memory and TLB misses), so the simpler comparison sort stays.
pub(super) fn sort_by_score(v: &mut [u64]) {
    v.par_sort_unstable();
}

/// Splits a sorted packed slice into runs of equal score: yields each run's length and its
/// number of payloads equal to 1 (positives). Used by the label-based metrics.
pub(super) fn tie_groups(sorted: &[u64]) -> impl DoubleEndedIterator<Item = (usize, usize)> + '_ {
    sorted
        .chunk_by(|a, b| key(*a) == key(*b))
        .map(|g| (g.len(), g.iter().filter(|&&p| payload(p) == 1).count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_sorts_like_floats() {
        let xs = [
            f32::NEG_INFINITY,
            -1e30,
            -2.5,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            3.0e38,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        // The two zeros are one score.
        assert_eq!(order_key(-0.0), order_key(0.0));
    }

    #[test]
    fn pack_keeps_score_and_payload() {
        let p = pack(-3.25, 7);
        assert_eq!(payload(p), 7);
        assert_eq!(key(p), order_key(-3.25));
        // Score order dominates payload order.
        assert!(pack(0.1, u32::MAX) < pack(0.2, 0));
    }

    #[test]
    fn sort_orders_by_score() {
        let mut rng = crate::rng::Rng::new(3);
        // Wide-range scores with both signs and many ties, scores in one narrow range, and a
        // single repeated value; compared with a float sort of the scores.
        let cases: Vec<Vec<f32>> = vec![
            (0..100_000)
                .map(|_| (rng.normal() * 1e3).round() * 10f32.powi(rng.below(7) as i32 - 3))
                .collect(),
            (0..50_000).map(|_| 0.5 + 0.25 * rng.uniform()).collect(),
            vec![0.25; 20_000],
        ];
        for scores in cases {
            let mut packed: Vec<u64> = scores
                .iter()
                .enumerate()
                .map(|(i, &s)| pack(s, i as u32))
                .collect();
            sort_by_score(&mut packed);
            // Reading the scores back through the payload (a unique index) gives the
            // float-sorted scores.
            let got: Vec<f32> = packed
                .iter()
                .map(|&p| scores[payload(p) as usize])
                .collect();
            let mut want = scores.clone();
            want.sort_by(|a, b| a.partial_cmp(b).unwrap());
            assert_eq!(got, want);
        }
    }

    #[test]
    fn tie_groups_counts_runs() {
        let mut v = vec![
            pack(0.5, 1),
            pack(0.5, 0),
            pack(0.1, 0),
            pack(0.9, 1),
            pack(0.5, 1),
        ];
        v.sort_unstable();
        let groups: Vec<_> = tie_groups(&v).collect();
        assert_eq!(groups, vec![(1, 0), (3, 2), (1, 1)]);
    }
}
