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
pub fn gaussian_blur(maps: &mut [f32], h: usize, w: usize, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let k = gaussian_kernel(sigma, 4.0);
    let r = (k.len() / 2) as isize;
    maps.par_chunks_mut(h * w).for_each(|plane| {
        let mut tmp = vec![0.0; h * w];
        // Rows.
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for x in 0..w {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    s += kv * row[reflect(x as isize + j as isize - r, w as isize)];
                }
                tmp[y * w + x] = s;
            }
        }
        // Columns.
        for x in 0..w {
            for y in 0..h {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    s += kv * tmp[reflect(y as isize + j as isize - r, h as isize) * w + x];
                }
                plane[y * w + x] = s;
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
}
