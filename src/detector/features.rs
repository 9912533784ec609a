//! Patch features: backbone taps aggregated onto one grid, PaDiM style (METHOD.md §1).
//!
//! Each tapped map is bilinearly resized to the grid of the first (finest) tap, averaged over
//! a 3x3 neighbourhood (stride 1, padded cells not counted) for local context, and the maps
//! are concatenated along channels. Default: EfficientNet-Lite0 `blocks.4` (40 ch, stride 8)
//! and `blocks.10` (112 ch, stride 16) at 224 input give a 28x28 grid of 152-d features.
//! Output is patch-major `[B, grid*grid, dim]`: one row per patch, as the prototype search
//! and the flow consume it.

use crate::error::{Error, Result};
use crate::models::{Backbone, EfficientNetLite};
use crate::ops::pool::avg_pool_plane;
use crate::ops::resize::bilinear_plane;
use crate::tensor::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Which features to extract (saved in every model directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Which EfficientNet-Lite the features come from (absent in older model.json: lite0).
    #[serde(default)]
    pub backbone: Backbone,
    pub taps: Vec<String>,
    pub input_size: usize,
    /// Side of the local averaging window (odd; 1 = none).
    pub pool: usize,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec::for_backbone(Backbone::Lite0)
    }
}

impl FeatureSpec {
    /// The default spec on `backbone`: the last blocks of stages 3 and 5 (Lite0 `blocks.4` +
    /// `blocks.10`, Lite1/Lite2 `blocks.6` + `blocks.14`), 224 input, 3x3 pooling.
    pub fn for_backbone(backbone: Backbone) -> FeatureSpec {
        FeatureSpec {
            backbone,
            taps: backbone.default_taps(),
            input_size: 224,
            pool: 3,
        }
    }

    /// (grid side, feature dimension) this spec produces; errors on unknown taps.
    pub fn geometry(&self) -> Result<(usize, usize)> {
        let mut dim = 0;
        let mut grid = None;
        for t in &self.taps {
            let (c, stride) = self.backbone.tap_channels_and_stride(t).ok_or_else(|| {
                Error::invalid(format!(
                    "unknown {} tap '{t}' (stem or blocks.0..blocks.{})",
                    self.backbone,
                    self.backbone.num_blocks() - 1
                ))
            })?;
            dim += c;
            grid.get_or_insert(self.input_size.div_ceil(stride));
        }
        let grid = grid.ok_or_else(|| Error::invalid("no backbone taps configured"))?;
        if self.pool.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "pool window must be odd, got {}",
                self.pool
            )));
        }
        Ok((grid, dim))
    }
}

/// The backbone plus the aggregation that turns images into patch features.
#[derive(Clone)]
pub struct FeatureExtractor {
    net: Arc<EfficientNetLite>,
    spec: FeatureSpec,
    grid: usize,
    dim: usize,
}

impl FeatureExtractor {
    pub fn new(net: Arc<EfficientNetLite>, spec: FeatureSpec) -> Result<FeatureExtractor> {
        let (grid, dim) = spec.geometry()?;
        if net.backbone() != spec.backbone {
            return Err(Error::invalid(format!(
                "the feature spec wants EfficientNet-{} but the loaded backbone is {}",
                spec.backbone,
                net.backbone()
            )));
        }
        Ok(FeatureExtractor {
            net,
            spec,
            grid,
            dim,
        })
    }

    /// The backbone.
    pub fn net(&self) -> &Arc<EfficientNetLite> {
        &self.net
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }
    /// Side of the patch grid (28 by default).
    pub fn grid(&self) -> usize {
        self.grid
    }
    /// Feature dimension per patch (152 by default).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `[B, 3, S, S]` network input -> `[B, grid², dim]` patch features.
    pub fn extract(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.spec.input_size;
        if x.rank() != 4 || x.dim(2) != s || x.dim(3) != s {
            return Err(Error::shape(format!(
                "feature input must be [B, 3, {s}, {s}], got {:?}",
                x.shape()
            )));
        }
        let taps: Vec<&str> = self.spec.taps.iter().map(|t| t.as_str()).collect();
        let maps = self.net.forward_taps(x, &taps)?;
        let (b, g, dim) = (x.dim(0), self.grid, self.dim);
        let mut out = vec![0.0f32; b * g * g * dim];
        let mut c_off = 0;
        for (_, m) in &maps {
            let (c, h, w) = (m.dim(1), m.dim(2), m.dim(3));
            let mv = m.f32s();
            // Per (image, channel) plane: resize to the grid, pool, then scatter channels-last.
            let planes: Vec<Vec<f32>> = (0..b * c)
                .into_par_iter()
                .map(|bc| {
                    let src = &mv[bc * h * w..(bc + 1) * h * w];
                    let mut resized = vec![0.0; g * g];
                    if (h, w) == (g, g) {
                        resized.copy_from_slice(src);
                    } else {
                        bilinear_plane(src, h, w, g, g, &mut resized);
                    }
                    if self.spec.pool <= 1 {
                        return resized;
                    }
                    let mut pooled = vec![0.0; g * g];
                    avg_pool_plane(&resized, g, g, self.spec.pool, &mut pooled);
                    pooled
                })
                .collect();
            out.par_chunks_mut(g * g * dim)
                .enumerate()
                .for_each(|(img, o)| {
                    for ch in 0..c {
                        let plane = &planes[img * c + ch];
                        for p in 0..g * g {
                            o[p * dim + c_off + ch] = plane[p];
                        }
                    }
                });
            c_off += c;
        }
        Ok(Tensor::from_parts(out, vec![b, g * g, dim]))
    }
}
