//! Image cues computed once per training image (METHOD.md "Training the reconstruction
//! model"): per-patch high-frequency energy ([`frequency_weights`]) and the patches that stand
//! out from the border ([`foreground`]).

use super::super::{GRID, PATCHES};

/// Pixels per patch side (a 224x224 input cut into 16x16 patches).
pub const PATCH_PX: usize = 16;
/// Side of the network input image the cues are computed from.
pub const IMAGE_SIDE: usize = GRID * PATCH_PX;

/// [`foreground`] returns the whole image when fewer patches than this qualify.
pub const MIN_FOREGROUND_PATCHES: usize = 4;

/// Panics unless `image` is a `[3, 224, 224]` CHW image (the network input; its size is fixed
/// by preprocessing, so a wrong length is a bug in the caller, not bad user data).
fn check_image(image: &[f32]) {
    assert_eq!(
        image.len(),
        3 * IMAGE_SIDE * IMAGE_SIDE,
        "masking cues need a [3, {IMAGE_SIDE}, {IMAGE_SIDE}] image"
    );
}

/// Per-patch mean squared Laplacian of the grey image (mean of the three channels), the
/// 4-neighbour stencil `4g - up - down - left - right` with replicated borders. Non-finite
/// energies (from non-finite pixels) count as 0.
fn patch_energy(image: &[f32]) -> Vec<f32> {
    check_image(image);
    let s = IMAGE_SIDE;
    let hw = s * s;
    let grey: Vec<f32> = (0..hw)
        .map(|i| (image[i] + image[hw + i] + image[2 * hw + i]) / 3.0)
        .collect();
    let mut energy = vec![0f32; PATCHES];
    for y in 0..s {
        let (up, down) = (y.saturating_sub(1), (y + 1).min(s - 1));
        for x in 0..s {
            let (left, right) = (x.saturating_sub(1), (x + 1).min(s - 1));
            let lap = 4.0 * grey[y * s + x]
                - grey[up * s + x]
                - grey[down * s + x]
                - grey[y * s + left]
                - grey[y * s + right];
            energy[(y / PATCH_PX) * GRID + x / PATCH_PX] += lap * lap;
        }
    }
    let area = (PATCH_PX * PATCH_PX) as f32;
    energy
        .into_iter()
        .map(|e| if e.is_finite() { e / area } else { 0.0 })
        .collect()
}

/// Per-patch mean colour (one value per channel).
fn patch_colours(image: &[f32]) -> Vec<[f32; 3]> {
    check_image(image);
    let s = IMAGE_SIDE;
    let mut colours = vec![[0f32; 3]; PATCHES];
    for (c, plane) in image.chunks_exact(s * s).enumerate() {
        for (y, row) in plane.chunks_exact(s).enumerate() {
            for (x, &v) in row.iter().enumerate() {
                colours[(y / PATCH_PX) * GRID + x / PATCH_PX][c] += v;
            }
        }
    }
    let area = (PATCH_PX * PATCH_PX) as f32;
    for col in &mut colours {
        col.iter_mut().for_each(|v| *v /= area);
    }
    colours
}

/// Min-max normalisation to `[0, 1]` over the finite values; non-finite values map to 0.
/// When every finite value is equal (or none is finite) every entry is 1 (no preference).
pub(super) fn min_max(values: &[f32]) -> Vec<f32> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f32::INFINITY, f32::min);
    let hi = finite.fold(f32::NEG_INFINITY, f32::max);
    // `hi <= lo` also covers "no finite value" (hi = -inf, lo = +inf).
    if hi <= lo {
        return vec![1.0; values.len()];
    }
    values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                (v - lo) / (hi - lo)
            } else {
                0.0
            }
        })
        .collect()
}

/// High-frequency energy of each patch (the "frequency" weighting of combinational masking):
/// the mean squared Laplacian of the grey image over the patch's 16x16 pixels, min-max
/// normalised to `[0, 1]` over the 196 patches (all equal -> all 1).
///
/// `image` is the network input, `[3, 224, 224]` CHW, normalised. Panics on another length.
pub fn frequency_weights(image: &[f32]) -> Vec<f32> {
    min_max(&patch_energy(image))
}

/// The patches on the outer ring of the grid (52 of them).
fn border_patches() -> impl Iterator<Item = usize> {
    (0..PATCHES).filter(|&i| {
        let (r, c) = (i / GRID, i % GRID);
        r == 0 || c == 0 || r == GRID - 1 || c == GRID - 1
    })
}

/// Median of a non-empty list (mean of the two middle values for an even count).
fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// `median + 3 sigma` of a sample, with the robust `sigma = 1.4826 * MAD` (median absolute
/// deviation), so that an object reaching into a few border patches does not inflate it.
fn robust_upper(v: Vec<f32>) -> f32 {
    let med = median(v.clone());
    let mad = median(v.into_iter().map(|x| (x - med).abs()).collect());
    med + 3.0 * 1.4826 * mad
}

/// The foreground of an image, estimated from the image itself (no labels, no masks).
///
/// Rule: the border ring of patches is taken as a sample of the background.
/// 1. Background colour = per-channel median of the border patches' mean colours.
/// 2. Colour test: a patch is foreground when the distance of its mean colour from the
///    background colour exceeds `median + 3 sigma` of the border patches' distances plus a
///    margin of 0.1 (about 13 grey levels in the `(x - 127) / 128` scale).
/// 3. Texture test: a patch is foreground when its high-frequency energy (mean squared
///    Laplacian, as in [`frequency_weights`] before normalisation) exceeds twice the border's
///    `median + 3 sigma` energy plus 1e-3 (a floor above 8-bit quantisation noise).
///    `sigma = 1.4826 * MAD` in both tests (robust to an object touching the border).
/// 4. Either test suffices. When fewer than [`MIN_FOREGROUND_PATCHES`] patches qualify (e.g.
///    a texture filling the image, or a flat image), every patch is foreground: the result is
///    never empty.
///
/// Object edges have a strong Laplacian, so the patches just outside an object's outline
/// usually qualify too: the foreground is the object plus a thin rim.
///
/// `image` is the network input, `[3, 224, 224]` CHW, normalised. Panics on another length.
pub fn foreground(image: &[f32]) -> Vec<bool> {
    let colours = patch_colours(image);
    let energy = patch_energy(image);
    let border: Vec<usize> = border_patches().collect();

    let background: [f32; 3] =
        std::array::from_fn(|c| median(border.iter().map(|&i| colours[i][c]).collect()));
    let distance: Vec<f32> = colours
        .iter()
        .map(|col| {
            let d2: f32 = col
                .iter()
                .zip(&background)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            if d2.is_finite() { d2.sqrt() } else { 0.0 }
        })
        .collect();
    let colour_threshold = robust_upper(border.iter().map(|&i| distance[i]).collect()) + 0.1;
    let energy_threshold = 2.0 * robust_upper(border.iter().map(|&i| energy[i]).collect()) + 1e-3;

    let fg: Vec<bool> = (0..PATCHES)
        .map(|i| distance[i] > colour_threshold || energy[i] > energy_threshold)
        .collect();
    if fg.iter().filter(|&&f| f).count() < MIN_FOREGROUND_PATCHES {
        vec![true; PATCHES]
    } else {
        fg
    }
}
