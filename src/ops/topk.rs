//! Top-k selection per row: the indices of the `k` largest values, ordered by value
//! (descending), ties broken by the lower index so results are deterministic.
//! Used for proposal masking (mask the top m% most abnormal patches).

use crate::error::{Error, Result};
use std::cmp::Ordering;

fn order(row: &[f32], a: usize, b: usize) -> Ordering {
    // Descending value; NaN sorts last; equal values by ascending index.
    let (x, y) = (row[a], row[b]);
    match (x.is_nan(), y.is_nan()) {
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => y.partial_cmp(&x).unwrap_or(Ordering::Equal).then(a.cmp(&b)),
    }
}

/// Indices of the `k` largest entries of `row`.
pub fn topk_row(row: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(row.len());
    let mut idx: Vec<usize> = (0..row.len()).collect();
    if k == 0 {
        return Vec::new();
    }
    if k < row.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| order(row, a, b));
        idx.truncate(k);
    }
    idx.sort_by(|&a, &b| order(row, a, b));
    idx
}

/// Top-k per row of a `[rows, n]` buffer.
pub fn topk_rows(x: &[f32], n: usize, k: usize) -> Result<Vec<Vec<usize>>> {
    if n == 0 || !x.len().is_multiple_of(n) {
        return Err(Error::shape(format!(
            "top-k over rows of {n} in {} values",
            x.len()
        )));
    }
    Ok(x.chunks(n).map(|r| topk_row(r, k)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_and_order() {
        let r = [0.5, 0.9, 0.1, 0.9, f32::NAN, 0.7];
        assert_eq!(topk_row(&r, 3), vec![1, 3, 5]);
        assert_eq!(topk_row(&r, 0), Vec::<usize>::new());
        assert_eq!(topk_row(&r, 10).len(), 6);
        assert_eq!(topk_row(&r, 10)[5], 4, "NaN last");
        let rows = topk_rows(&[1.0, 2.0, 3.0, 3.0, 2.0, 1.0], 3, 1).unwrap();
        assert_eq!(rows, vec![vec![2], vec![0]]);
    }
}
