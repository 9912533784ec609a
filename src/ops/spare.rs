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
//! workers never touch them), at most [`MAX_SPARES`] are kept, and a pass frees them at its
//! end ([`clear`]), so nothing outlives it.

use std::cell::RefCell;

/// Most spares a thread keeps (an MBConv block frees about three maps).
pub const MAX_SPARES: usize = 4;

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

/// Frees this thread's spares (the end of a forward pass).
pub fn clear() {
    SPARES.with_borrow_mut(Vec::clear);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_smallest_fitting_spare_and_clears() {
        clear();
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
        clear();
        assert_eq!(take(2), vec![0.0; 2], "cleared");
    }
}
