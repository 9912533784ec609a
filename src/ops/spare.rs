//! Spare activation buffers: a forward pass hands back the maps it is done with ([`give`]),
//! and a later op that overwrites its whole output takes one ([`take`]) instead of a fresh
//! zero-filled vector.
//!
//! Why: zero-filling a fresh output is a *serial* pass over memory on the calling thread
//! (the conv kernels then overwrite every value in parallel): about 10% of a batch-8 backbone
//! pass in a perf profile. A spare's stale values are ordinary initialised `f32`s, so reusing
//! one needs no unsafe code; the op must simply write every value it returns.
//!
//! The spares are thread-local (a pass allocates on its calling thread; the kernels' rayon
//! workers never touch them) and at most [`MAX_SPARES`] are kept. At the end of a pass
//! ([`clear`]) only spares totalling at most [`KEEP_BYTES`] stay for the next pass on this
//! thread (a batch-1 or batch-8 Lite0 pass's maps; a fresh map for every pass was about 5%
//! of a pass in a perf profile, as fresh zeroed memory); bigger batches' maps are freed, so an
//! idle thread holds at most that much.

use std::cell::RefCell;

/// Most spares a thread keeps (an MBConv block frees about three maps).
pub const MAX_SPARES: usize = 4;

/// Bytes of spares a thread keeps between passes (see [`clear`]).
pub const KEEP_BYTES: usize = 64 << 20;

thread_local! {
    static SPARES: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `n` values for an op that overwrites all of them: the spare of the smallest
/// capacity that holds `n` (its stale values kept; only a part past its current length is
/// zero-filled), else fresh zeros.
pub fn take(n: usize) -> Vec<f32> {
    let spare = SPARES.with_borrow_mut(|s| {
        let best = (0..s.len())
            .filter(|&i| s[i].capacity() >= n)
            .min_by_key(|&i| s[i].capacity())?;
        Some(s.swap_remove(best))
    });
    match spare {
        Some(mut v) => {
            // Within the capacity: no reallocation, and a shorter spare zero-fills only its
            // new tail.
            v.resize(n, 0.0);
            v
        }
        None => vec![0.0; n],
    }
}

/// Hands back a map the caller is done with (dropped when [`MAX_SPARES`] are kept).
pub fn give(v: Vec<f32>) {
    SPARES.with_borrow_mut(|s| {
        if s.len() < MAX_SPARES {
            s.push(v);
        }
    });
}

/// The end of a forward pass: keeps this thread's largest spares that fit [`KEEP_BYTES`]
/// together, for the next pass, and frees the rest.
pub fn clear() {
    SPARES.with_borrow_mut(|s| {
        s.sort_by_key(|v| std::cmp::Reverse(v.capacity()));
        let mut kept = 0;
        s.retain(|v| {
            let bytes = v.capacity() * std::mem::size_of::<f32>();
            let keep = kept + bytes <= KEEP_BYTES;
            kept += if keep { bytes } else { 0 };
            keep
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_smallest_fitting_spare_and_clears() {
        SPARES.with_borrow_mut(Vec::clear);
        assert_eq!(take(3), vec![0.0; 3], "no spare: zeros");
        give(vec![1.0; 10]);
        give(vec![2.0; 5]);
        let v = take(4);
        assert_eq!(v, vec![2.0; 4], "the 5-value spare, truncated");
        give(v);
        // Longer than the 4 values it now holds, within its capacity of 5: the tail is zero.
        let v = take(5);
        assert_eq!(v, [2.0, 2.0, 2.0, 2.0, 0.0]);
        let v = take(7);
        assert_eq!(v, vec![1.0; 7]);
        assert_eq!(take(2), vec![0.0; 2], "none left");
        for _ in 0..MAX_SPARES + 2 {
            give(vec![3.0; 2]);
        }
        let kept = SPARES.with_borrow(Vec::len);
        assert_eq!(kept, MAX_SPARES);
        // The end of a pass keeps small spares for the next one ...
        clear();
        assert_eq!(SPARES.with_borrow(Vec::len), MAX_SPARES);
        assert_eq!(take(2), vec![3.0; 2], "kept across passes");
        // ... but not more than KEEP_BYTES: the largest that fit, the rest freed.
        SPARES.with_borrow_mut(Vec::clear);
        let big = KEEP_BYTES / 4 / 2 + 1; // two of these exceed KEEP_BYTES
        give(vec![1.0; big]);
        give(vec![2.0; big]);
        give(vec![3.0; 8]);
        clear();
        let caps: Vec<usize> = SPARES.with_borrow(|s| s.iter().map(Vec::capacity).collect());
        assert_eq!(caps.len(), 2, "{caps:?}");
        assert!(caps.contains(&big) && caps.contains(&8), "{caps:?}");
        SPARES.with_borrow_mut(Vec::clear);
    }
}
