//! Gaussian blur of 2-D maps, matching `scipy.ndimage.gaussian_filter(sigma, truncate=4,
//! mode='reflect')`: a separable kernel of radius `round(4σ)`, normalised to sum 1, with
//! half-sample symmetric borders (`d c b a | a b c d | d c b a`).

use rayon::prelude::*;

/// The normalised 1-D Gaussian taps, length `2r+1`.
pub fn gaussian_kernel(sigma: f32, truncate: f32) -> Vec<f32> {
    let r = (truncate * sigma + 0.5).floor() as isize;
    let mut k: Vec<f32> = (-r..=r)
        .map(|i| (-0.5 * (i as f32 / sigma).powi(2)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Index `i` reflected into `[0, n)` the scipy 'reflect' way.
#[inline]
fn reflect(mut i: isize, n: isize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * n;
    i = i.rem_euclid(period);
    if i >= n {
        (period - 1 - i) as usize
    } else {
        i as usize
    }
}

/// Blurs each `h x w` plane of `maps` in place.
///
/// Rows, then columns, each output the sum `Σ_j k[j]·v[reflect(i + j - r)]` accumulated in
/// `j` order from 0 — as the direct per-pixel loop (`blur_naive` in the tests), so the
/// result is bit-identical to it — but computed a whole row at a time: for each tap, one
/// multiply-add over the row's interior (contiguous, vectorised), with only the `r` columns
/// at each edge indexing through `reflect`. The column pass walks rows of the row-blurred
/// plane, never down a column.
pub fn gaussian_blur(maps: &mut [f32], h: usize, w: usize, sigma: f32) {
    if sigma <= 0.0 || h == 0 || w == 0 {
        return;
    }
    let k = gaussian_kernel(sigma, 4.0);
    let r = k.len() / 2;
    // Columns whose window stays inside the row: r..w-r (none when w <= 2r).
    let (lo, hi) = (r.min(w), w.saturating_sub(r).max(r.min(w)));
    let refl =
        |i: usize, j: usize, n: usize| reflect(i as isize + j as isize - r as isize, n as isize);
    maps.par_chunks_mut(h * w).for_each(|plane| {
        let mut tmp = vec![0.0f32; h * w];
        // Rows.
        for (row, out) in plane.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
            for x in (0..lo).chain(hi..w) {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    s += kv * row[refl(x, j, w)];
                }
                out[x] = s;
            }
            if hi > lo {
                let inner = &mut out[lo..hi];
                for (j, &kv) in k.iter().enumerate() {
                    let taps = &row[lo + j - r..hi + j - r];
                    inner.iter_mut().zip(taps).for_each(|(s, &v)| *s += kv * v);
                }
            }
        }
        // Columns: output row y is Σ_j k[j] · (row-blurred row reflect(y + j - r)).
        for (y, out) in plane.chunks_exact_mut(w).enumerate() {
            out.fill(0.0);
            for (j, &kv) in k.iter().enumerate() {
                let src = &tmp[refl(y, j, h) * w..][..w];
                out.iter_mut().zip(src).for_each(|(s, &v)| *s += kv * v);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_reflect() {
        let k = gaussian_kernel(4.0, 4.0);
        assert_eq!(k.len(), 33);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(
            [reflect(-1, 4), reflect(-2, 4), reflect(4, 4), reflect(5, 4)],
            [0, 1, 3, 2]
        );
    }

    #[test]
    fn blur_preserves_constant_and_mass_of_centred_impulse() {
        let (h, w) = (40, 40);
        let mut c = vec![2.0; h * w];
        gaussian_blur(&mut c, h, w, 4.0);
        assert!(c.iter().all(|v| (v - 2.0).abs() < 1e-5));
        let mut d = vec![0.0; h * w];
        d[20 * w + 20] = 1.0;
        gaussian_blur(&mut d, h, w, 2.0);
        assert!((d.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(d[20 * w + 20] > d[20 * w + 23]);
    }

    /// The direct loop: each output of each pass summed over its taps in order.
    fn blur_naive(plane: &mut [f32], h: usize, w: usize, sigma: f32) {
        let k = gaussian_kernel(sigma, 4.0);
        let r = (k.len() / 2) as isize;
        let mut tmp = vec![0.0; h * w];
        for y in 0..h {
            for x in 0..w {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    s += kv * plane[y * w + reflect(x as isize + j as isize - r, w as isize)];
                }
                tmp[y * w + x] = s;
            }
        }
        for x in 0..w {
            for y in 0..h {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    s += kv * tmp[reflect(y as isize + j as isize - r, h as isize) * w + x];
                }
                plane[y * w + x] = s;
            }
        }
    }

    #[test]
    fn row_at_a_time_equals_the_direct_loop_bit_for_bit() {
        // Planes narrower than the kernel (every column an edge), one row / column, ragged
        // sides, two planes, small and large sigma.
        for (h, w) in [(1, 1), (1, 9), (7, 1), (5, 40), (37, 23), (64, 64)] {
            for sigma in [0.7, 2.0, 4.0] {
                let maps = crate::ops::testutil::seeded(2 * h * w, (h * 31 + w) as u64);
                let mut got = maps.clone();
                gaussian_blur(&mut got, h, w, sigma);
                let mut want = maps.clone();
                for plane in want.chunks_mut(h * w) {
                    blur_naive(plane, h, w, sigma);
                }
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{h}x{w} sigma {sigma}");
            }
        }
    }
}
