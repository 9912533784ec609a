//! Connected components of a binary mask, 8-connectivity.
//!
//! Two `true` pixels belong to one component when a chain of `true` pixels joins them, each
//! step going to one of the 8 neighbours (edges and corners). This is what the MVTec AD
//! evaluation code uses for AUPRO ground-truth regions: `scipy.ndimage.label(gt, structure)`
//! with the full 3x3 structure `np.ones((3, 3))`. Components are numbered 1, 2, ... in raster
//! order of their first pixel (row by row, left to right), as scipy numbers them; 0 is the
//! background.
//!
//! Method: scan the pixels in raster order; an unlabelled `true` pixel starts a new component,
//! which is flooded with an explicit stack (no recursion, so one huge region cannot overflow
//! the call stack). Each pixel is pushed at most once: O(h w).

use crate::error::{Error, Result};

/// The labelling of one mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Components {
    /// One label per pixel, row-major: 0 = background, `k >= 1` = the k-th component.
    pub labels: Vec<u32>,
    /// `sizes[k - 1]` = number of pixels of component `k`.
    pub sizes: Vec<usize>,
}

impl Components {
    /// Number of components.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }
}

/// Labels the 8-connected components of `mask` (`height x width`, row-major).
/// Errors when `mask.len() != height * width`.
pub fn label_components(mask: &[bool], height: usize, width: usize) -> Result<Components> {
    if height.checked_mul(width) != Some(mask.len()) {
        return Err(Error::shape(format!(
            "label_components: mask of {} pixels is not {height}x{width}",
            mask.len()
        )));
    }
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let label = u32::try_from(sizes.len() + 1)
            .map_err(|_| Error::invalid("label_components: more than u32::MAX components"))?;
        // Label a pixel when it is pushed, so it is never pushed twice.
        labels[start] = label;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (y, x) = (i / width, i % width);
            // The 3x3 neighbourhood clipped to the image.
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let j = ny * width + nx;
                    if mask[j] && labels[j] == 0 {
                        labels[j] = label;
                        stack.push(j);
                    }
                }
            }
        }
        sizes.push(size);
    }
    Ok(Components { labels, sizes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses rows of '#' (true) and '.' (false).
    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let m = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        (m, rows.len(), rows[0].len())
    }

    fn label(rows: &[&str]) -> Components {
        let (m, h, w) = mask(rows);
        label_components(&m, h, w).unwrap()
    }

    #[test]
    fn diagonal_neighbours_connect() {
        // With 4-connectivity these would be 3 components; with 8-connectivity one.
        let c = label(&["#..", ".#.", "..#"]);
        assert_eq!(c.count(), 1);
        assert_eq!(c.sizes, vec![3]);
        let c = label(&["..#", ".#.", "#.."]);
        assert_eq!(c.labels, vec![0, 0, 1, 0, 1, 0, 1, 0, 0]);
    }

    #[test]
    fn separate_blobs_numbered_in_raster_order() {
        let c = label(&[
            "##..#", //
            "#...#", //
            ".....", //
            "..#..", //
        ]);
        assert_eq!(c.count(), 3);
        assert_eq!(c.sizes, vec![3, 2, 1]);
        #[rustfmt::skip]
        let want = vec![
            1, 1, 0, 0, 2,
            1, 0, 0, 0, 2,
            0, 0, 0, 0, 0,
            0, 0, 3, 0, 0,
        ];
        assert_eq!(c.labels, want);
    }

    #[test]
    fn u_shape_is_one_component() {
        // The right arm starts a row before it joins: raster order meets it first as a new
        // pixel, and the flood fill must still give it the left arm's label.
        let c = label(&["#.#", "#.#", "###"]);
        assert_eq!(c.count(), 1);
        assert_eq!(c.sizes, vec![7]);
        // A gap of one background pixel (no diagonal contact) separates.
        let c = label(&["#.#", "#.#"]);
        assert_eq!(c.sizes, vec![2, 2]);
    }

    #[test]
    fn ring_with_hole() {
        let c = label(&["###", "#.#", "###"]);
        assert_eq!(c.sizes, vec![8]);
        assert_eq!(c.labels[4], 0);
    }

    #[test]
    fn edges_and_thin_images() {
        assert_eq!(label(&["#.##.#"]).sizes, vec![1, 2, 1]);
        assert_eq!(label(&["#", "#", ".", "#"]).sizes, vec![2, 1]);
        assert_eq!(label(&["#"]).sizes, vec![1]);
        assert_eq!(label(&["."]).count(), 0);
        // Corners wrap-around must not connect: the last pixel of row 0 and the first of row 1
        // are neighbours in memory only.
        assert_eq!(label(&["..#", "#.."]).sizes, vec![1, 1]);
    }

    #[test]
    fn empty_and_full() {
        let c = label(&["...", "..."]);
        assert_eq!(c.count(), 0);
        assert!(c.labels.iter().all(|&l| l == 0));
        let c = label(&["###", "###"]);
        assert_eq!(c.sizes, vec![6]);
        let c = label_components(&[], 0, 0).unwrap();
        assert_eq!(c.count(), 0);
    }

    #[test]
    fn checkerboard_is_one_component() {
        // Every '#' touches the next diagonally.
        let c = label(&["#.#.", ".#.#", "#.#.", ".#.#"]);
        assert_eq!(c.sizes, vec![8]);
    }

    #[test]
    fn large_region_no_stack_overflow() {
        let (h, w) = (512, 512);
        let c = label_components(&vec![true; h * w], h, w).unwrap();
        assert_eq!(c.sizes, vec![h * w]);
    }

    #[test]
    fn wrong_size_errors() {
        assert!(label_components(&[true; 5], 2, 3).is_err());
    }
}
