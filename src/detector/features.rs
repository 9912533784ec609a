//! Patch features: backbone taps aggregated onto one grid, PaDiM style (METHOD.md §1).
//!
//! Each tapped map is bilinearly resized to the grid of the first (finest) tap, averaged over
//! a 3x3 neighbourhood (stride 1, padded cells not counted) for local context, and the maps
//! are concatenated along channels. Default: EfficientNet-Lite0 `blocks.4` (40 ch, stride 8)
//! and `blocks.10` (112 ch, stride 16) at 224 input give a 28x28 grid of 152-d features.
//! Output is patch-major `[B, grid*grid, dim]`: one row per patch, as the prototype search
//! and the flow consume it.
//!
//! A tap may be projected: `NAME:DIM` maps its `C` channels to `DIM` with a fixed seeded
//! Gaussian matrix (scaled by 1/√DIM, so distances are kept in expectation —
//! Johnson–Lindenstrauss). This bounds the bank dimension, and so the search cost, of the
//! wide inner taps (`blocks.N.dw` has 6x the channels of `blocks.N`). The matrix depends only
//! on the tap's position in the spec and its shape, never on data: the same for every class.

use crate::backend::CpuOps;
use crate::detector::coreset::random_projection_matrix;
use crate::error::{Error, Result};
use crate::models::efficientnet_infer::InferFeatures;
use crate::models::{Backbone, EfficientNetLite};
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
    /// Tap points (`stem`, `blocks.N`, `blocks.N.expand`, `blocks.N.dw`), each optionally
    /// projected to fewer dimensions (`blocks.10.dw:128`). The first sets the grid.
    pub taps: Vec<String>,
    pub input_size: usize,
    /// Side of the local averaging window (odd; 1 = none).
    pub pool: usize,
    /// How the network input is normalised (absent in older model.json: `imagenet`).
    #[serde(default)]
    pub input_norm: InputNorm,
}

/// How an image is normalised before the backbone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputNorm {
    /// ImageNet's channel mean and std, as the backbone was trained.
    #[default]
    Imagenet,
    /// Then each image's channels standardised to mean 0 and std 1 over the image: a global
    /// change of brightness or contrast (lighting, exposure) no longer moves the features.
    PerImage,
    /// Both views side by side: each patch's feature is its ImageNet-normalised feature
    /// followed by its per-image-standardised one (twice the dimension and backbone work).
    Both,
}

impl InputNorm {
    /// Backbone passes (views) per image.
    pub fn views(self) -> usize {
        match self {
            InputNorm::Both => 2,
            _ => 1,
        }
    }
}

impl std::str::FromStr for InputNorm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "imagenet" => Ok(InputNorm::Imagenet),
            "per-image" => Ok(InputNorm::PerImage),
            "both" => Ok(InputNorm::Both),
            _ => Err(format!(
                "unknown input normalisation '{s}' (imagenet | per-image | both)"
            )),
        }
    }
}

/// Standardises each `[S, S]` channel plane of `x` (`[B, 3, S, S]`) to mean 0, std 1.
#[cfg(test)]
fn standardise_planes(x: &Tensor) -> Tensor {
    let v = standardise_planes_host(&x.f32s(), x.dim(2) * x.dim(3));
    Tensor::from_parts(v, x.shape().to_vec())
}

/// Each `plane`-long run of `x` standardised to mean 0, std 1 (host work: the input is on the
/// host before any backend sees it).
pub(crate) fn standardise_planes_host(x: &[f32], plane: usize) -> Vec<f32> {
    let mut v = x.to_vec();
    v.par_chunks_mut(plane).for_each(|ch| {
        let n = plane as f64;
        let mean = ch.iter().map(|&a| a as f64).sum::<f64>() / n;
        let var = ch.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n;
        // A flat plane (a blank image) stays flat rather than dividing by ~0.
        let inv = 1.0 / var.sqrt().max(1e-3);
        ch.iter_mut()
            .for_each(|a| *a = ((*a as f64 - mean) * inv) as f32);
    });
    v
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
            input_norm: InputNorm::Imagenet,
        }
    }

    /// (grid side, feature dimension) this spec produces; errors on unknown taps.
    pub fn geometry(&self) -> Result<(usize, usize)> {
        let mut dim = 0;
        let mut grid = None;
        for t in &self.taps {
            let (c, stride, proj) = self.tap_geometry(t)?;
            dim += proj.unwrap_or(c);
            grid.get_or_insert(self.input_size.div_ceil(stride));
        }
        let grid = grid.ok_or_else(|| Error::invalid("no backbone taps configured"))?;
        let dim = dim * self.input_norm.views();
        if self.pool.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "pool window must be odd, got {}",
                self.pool
            )));
        }
        Ok((grid, dim))
    }

    /// (channels, stride, projected dimension) of one `taps` entry.
    fn tap_geometry(&self, tap: &str) -> Result<(usize, usize, Option<usize>)> {
        let (point, proj) = split_tap(tap)?;
        let (c, stride) = self
            .backbone
            .tap_channels_and_stride(point)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown {} tap '{point}' (stem, blocks.N, blocks.N.expand or blocks.N.dw with \
                 N in 0..{}; .expand only where the block expands)",
                    self.backbone,
                    self.backbone.num_blocks()
                ))
            })?;
        if let Some(p) = proj
            && p >= c
        {
            return Err(Error::invalid(format!(
                "tap '{tap}': projecting {c} channels to {p} does not reduce them (use fewer, or \
                 no ':{p}')"
            )));
        }
        Ok((c, stride, proj))
    }
}

/// `NAME` or `NAME:DIM` -> (tap point, projected dimension).
pub fn split_tap(tap: &str) -> Result<(&str, Option<usize>)> {
    match tap.split_once(':') {
        None => Ok((tap, None)),
        Some((point, d)) => match d.parse::<usize>() {
            Ok(d) if d > 0 => Ok((point, Some(d))),
            _ => Err(Error::invalid(format!(
                "tap '{tap}': the projection after ':' must be a positive dimension"
            ))),
        },
    }
}

/// Seed of the projection matrix of the `index`-th tap (fixed: part of what a spec means).
fn projection_seed(index: usize) -> u64 {
    0x7A95_u64 << 16 | index as u64
}

/// The backbone plus the aggregation that turns images into patch features.
#[derive(Clone)]
pub struct FeatureExtractor {
    net: Arc<EfficientNetLite>,
    spec: FeatureSpec,
    grid: usize,
    dim: usize,
    /// Per tap: its projection, when it has one, transposed to `[DIM, C]` (a 1x1 conv's
    /// weight: the extraction applies it to the pooled map).
    projections: Arc<Vec<Option<Arc<Vec<f32>>>>>,
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
        let projections = spec
            .taps
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (c, _, proj) = spec.tap_geometry(t)?;
                Ok(proj.map(|p| {
                    // The matrix is `[C, DIM]` row-major; its transpose, `[DIM, C]`.
                    let m = random_projection_matrix(c, p, projection_seed(i));
                    let t = (0..p * c).map(|k| m[(k % c) * p + k / c]).collect();
                    Arc::new(t)
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FeatureExtractor {
            net,
            spec,
            grid,
            dim,
            projections: Arc::new(projections),
        })
    }

    /// The backbone.
    pub fn net(&self) -> &Arc<EfficientNetLite> {
        &self.net
    }

    /// The projection of the `index`-th tap, `[DIM, C]`, when it has one.
    pub(crate) fn projection(&self, index: usize) -> Option<&Arc<Vec<f32>>> {
        self.projections.get(index)?.as_ref()
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

    /// `[B, 3, S, S]` network input -> `[B, grid², dim]` patch features: the one feature
    /// extraction ([`crate::models::efficientnet_infer`]) on the CPU's op set.
    pub fn extract(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.spec.input_size;
        if x.rank() != 4 || x.dim(2) != s || x.dim(3) != s {
            return Err(Error::shape(format!(
                "feature input must be [B, 3, {s}, {s}], got {:?}",
                x.shape()
            )));
        }
        EfficientNetLite::check_input(x)?;
        let b = x.dim(0);
        let rows = InferFeatures::new(CpuOps, self)?.extract(&x.f32s(), b)?;
        Ok(Tensor::from_parts(
            rows,
            vec![b, self.grid * self.grid, self.dim],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::{Trans, gemm};
    use crate::ops::pool::avg_pool_plane;
    use crate::ops::resize::bilinear_plane;

    /// The extraction as it was before it was written once over the op set: the CPU
    /// backbone's `forward_taps`, then the aggregation per plane. The reference the one
    /// extraction is held to.
    struct Reference<'a>(&'a FeatureExtractor);

    impl Reference<'_> {
        /// `[B, 3, S, S]` network input -> `[B, grid², dim]` patch features.
        fn extract(&self, x: &Tensor) -> Result<Tensor> {
            let s = self.0.spec.input_size;
            if x.rank() != 4 || x.dim(2) != s || x.dim(3) != s {
                return Err(Error::shape(format!(
                    "feature input must be [B, 3, {s}, {s}], got {:?}",
                    x.shape()
                )));
            }
            let taps: Vec<&str> = self
                .0
                .spec
                .taps
                .iter()
                .map(|t| split_tap(t).map(|(point, _)| point))
                .collect::<Result<_>>()?;
            match self.0.spec.input_norm {
                InputNorm::Imagenet => self.extract_view(x, &taps),
                InputNorm::PerImage => self.extract_view(&standardise_planes(x), &taps),
                InputNorm::Both => {
                    let a = self.extract_view(x, &taps)?.into_f32_vec();
                    let b = self
                        .extract_view(&standardise_planes(x), &taps)?
                        .into_f32_vec();
                    let (half, rows) = (self.0.dim / 2, x.dim(0) * self.0.grid * self.0.grid);
                    let mut out = Vec::with_capacity(rows * self.0.dim);
                    for (ra, rb) in a.chunks_exact(half).zip(b.chunks_exact(half)) {
                        out.extend_from_slice(ra);
                        out.extend_from_slice(rb);
                    }
                    Ok(Tensor::from_parts(
                        out,
                        vec![x.dim(0), self.0.grid * self.0.grid, self.0.dim],
                    ))
                }
            }
        }

        /// One view's features `[B, grid², dim / views]` of the (normalised) input `x`.
        fn extract_view(&self, x: &Tensor, taps: &[&str]) -> Result<Tensor> {
            let maps = self.0.net.forward_taps(x, taps)?;
            let (b, g, dim) = (
                x.dim(0),
                self.0.grid,
                self.0.dim / self.0.spec.input_norm.views(),
            );
            let mut out = vec![0.0f32; b * g * g * dim];
            let mut c_off = 0;
            let projections: Vec<Option<Vec<f32>>> = (self.0.spec.taps.iter().enumerate())
                .map(|(i, t)| {
                    let (c, _, p) = self.0.spec.tap_geometry(t).unwrap();
                    p.map(|p| random_projection_matrix(c, p, projection_seed(i)))
                })
                .collect();
            for ((_, m), proj) in maps.iter().zip(projections.iter()) {
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
                        if self.0.spec.pool <= 1 {
                            return resized;
                        }
                        let mut pooled = vec![0.0; g * g];
                        avg_pool_plane(&resized, g, g, self.0.spec.pool, &mut pooled);
                        pooled
                    })
                    .collect();
                let Some(proj) = proj else {
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
                    continue;
                };
                // Projected tap: rows [g², C] of each image times the matrix [C, DIM].
                let d = proj.len() / c;
                out.par_chunks_mut(g * g * dim)
                    .enumerate()
                    .for_each(|(img, o)| {
                        let mut rows = vec![0.0f32; g * g * c];
                        for ch in 0..c {
                            let plane = &planes[img * c + ch];
                            for p in 0..g * g {
                                rows[p * c + ch] = plane[p];
                            }
                        }
                        let mut projected = vec![0.0f32; g * g * d];
                        gemm(
                            g * g,
                            d,
                            c,
                            &rows,
                            Trans::N,
                            proj,
                            Trans::N,
                            &mut projected,
                            0.0,
                        );
                        for p in 0..g * g {
                            o[p * dim + c_off..p * dim + c_off + d]
                                .copy_from_slice(&projected[p * d..(p + 1) * d]);
                        }
                    });
                c_off += d;
            }
            Ok(Tensor::from_parts(out, vec![b, g * g, dim]))
        }
    }

    fn random_input(batch: usize, size: usize, seed: u64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n = batch * 3 * size * size;
        Tensor::new(
            (0..n).map(|_| r.range(-2.0, 1.5)).collect(),
            &[batch, 3, size, size],
        )
        .unwrap()
    }

    /// The one extraction on the CPU equals the previous CPU path (backbone taps, then the
    /// per-plane aggregation), on batches of 1 and 3, inputs of 64 and 96 px, tap sets with
    /// the stem, inner taps, projections and every input normalisation.
    #[test]
    fn the_one_extraction_matches_the_reference_path() {
        let w =
            crate::models::efficientnet::default_weights_dir().join(Backbone::Lite0.weights_file());
        if !w.is_file() {
            assert!(
                std::env::var_os("PMAD_REQUIRE_ASSETS").is_none(),
                "no {}",
                w.display()
            );
            eprintln!("skipped: no {}", w.display());
            return;
        }
        let net = Arc::new(EfficientNetLite::load(&w).unwrap());
        let cases: [(&[&str], usize, InputNorm); 5] = [
            (&["blocks.4", "blocks.10"], 3, InputNorm::Imagenet),
            (&["stem", "blocks.2"], 1, InputNorm::Imagenet),
            (
                &["blocks.3.expand", "blocks.4.dw:16", "blocks.5"],
                3,
                InputNorm::PerImage,
            ),
            (
                &["blocks.1", "blocks.6.dw:32", "blocks.6.expand"],
                1,
                InputNorm::Both,
            ),
            (
                &["blocks.10", "blocks.0.dw", "blocks.4:8"],
                1,
                InputNorm::Imagenet,
            ),
        ];
        let mut checked = 0;
        for (taps, pool, norm) in cases {
            for size in [64, 96] {
                for batch in [1, 3] {
                    let sp = FeatureSpec {
                        input_size: size,
                        pool,
                        input_norm: norm,
                        ..spec(taps)
                    };
                    let fx = FeatureExtractor::new(net.clone(), sp).unwrap();
                    let x = random_input(batch, size, (size * 10 + batch) as u64);
                    let got = fx.extract(&x).unwrap();
                    let want = Reference(&fx).extract(&x).unwrap();
                    assert_eq!(got.shape(), want.shape());
                    for (i, (g, w)) in got.f32s().iter().zip(want.f32s().iter()).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                            "{taps:?} {norm:?} {batch}x{size}: [{i}] {g} vs {w}"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 20);
    }

    fn spec(taps: &[&str]) -> FeatureSpec {
        FeatureSpec {
            taps: taps.iter().map(|t| t.to_string()).collect(),
            ..FeatureSpec::default()
        }
    }

    #[test]
    fn projected_and_inner_taps_set_the_dimension() {
        assert_eq!(
            spec(&["blocks.4", "blocks.10"]).geometry().unwrap(),
            (28, 152)
        );
        assert_eq!(
            spec(&["blocks.4", "blocks.10", "blocks.10.dw:128"])
                .geometry()
                .unwrap(),
            (28, 280)
        );
        assert_eq!(
            spec(&["blocks.4.dw:64", "blocks.10.dw"])
                .geometry()
                .unwrap(),
            (28, 64 + 672)
        );
        // Projection must reduce; the syntax is NAME[:DIM>0]; inner names are checked.
        for (bad, says) in [
            (&["blocks.4:40"][..], "does not reduce"),
            (&["blocks.4:0"][..], "positive dimension"),
            (&["blocks.4:x"][..], "positive dimension"),
            (&["blocks.4.dw2"][..], "unknown"),
            (&["blocks.0.expand"][..], "unknown"),
        ] {
            let e = spec(bad).geometry().unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn per_image_standardisation_removes_brightness_and_contrast() {
        let mut r = crate::rng::Rng::new(2);
        let x: Vec<f32> = (0..2 * 3 * 8 * 8).map(|_| r.range(-1.0, 1.0)).collect();
        // The same image, brighter and with more contrast: 2x + 0.7.
        let y: Vec<f32> = x.iter().map(|a| 2.0 * a + 0.7).collect();
        let a = standardise_planes(&Tensor::new(x, &[2, 3, 8, 8]).unwrap());
        let b = standardise_planes(&Tensor::new(y, &[2, 3, 8, 8]).unwrap());
        assert!(a.max_abs_diff(&b).unwrap() < 1e-5);
        for ch in a.f32s().chunks(64) {
            let m = ch.iter().sum::<f32>() / 64.0;
            let v = ch.iter().map(|c| (c - m) * (c - m)).sum::<f32>() / 64.0;
            assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4, "{m} {v}");
        }
        // A flat plane stays finite.
        let flat = standardise_planes(&Tensor::new(vec![0.3; 3 * 8 * 8], &[1, 3, 8, 8]).unwrap());
        assert!(flat.f32s().iter().all(|v| *v == 0.0));
        assert_eq!("per-image".parse::<InputNorm>(), Ok(InputNorm::PerImage));
        assert!("none".parse::<InputNorm>().is_err());
    }

    /// The Lite0 backbone, or `None` (saying so) where its weights were not fetched.
    fn lite0() -> Option<Arc<EfficientNetLite>> {
        let w =
            crate::models::efficientnet::default_weights_dir().join(Backbone::Lite0.weights_file());
        if !w.is_file() {
            eprintln!("skipped: no {}", w.display());
            return None;
        }
        Some(Arc::new(EfficientNetLite::load(&w).unwrap()))
    }

    /// A projected tap is the unprojected tap's features times its fixed Gaussian matrix.
    #[test]
    fn a_projected_tap_is_the_plain_tap_times_its_matrix() {
        let Some(net) = lite0() else { return };
        let small = |taps: &[&str]| FeatureSpec {
            input_size: 64,
            ..spec(taps)
        };
        let plain =
            FeatureExtractor::new(net.clone(), small(&["blocks.4", "blocks.4.dw"])).unwrap();
        let proj =
            FeatureExtractor::new(net.clone(), small(&["blocks.4", "blocks.4.dw:16"])).unwrap();
        assert_eq!((plain.dim(), proj.dim()), (280, 56));
        let mut r = crate::rng::Rng::new(1);
        let x = Tensor::new(
            (0..3 * 64 * 64).map(|_| r.range(-1.0, 1.0)).collect(),
            &[1, 3, 64, 64],
        )
        .unwrap();
        let (a, b) = (plain.extract(&x).unwrap(), proj.extract(&x).unwrap());
        let m = random_projection_matrix(240, 16, projection_seed(1));
        let (av, bv) = (a.f32s(), b.f32s());
        for p in 0..64 {
            let row = &av[p * 280..(p + 1) * 280];
            // The unprojected tap's columns are kept as they are.
            assert_eq!(&bv[p * 56..p * 56 + 40], &row[..40]);
            for j in 0..16 {
                let want: f32 = (0..240).map(|i| row[40 + i] * m[i * 16 + j]).sum();
                let got = bv[p * 56 + 40 + j];
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
        }
        // The matrix is fixed by the spec: a second extractor gives the same features.
        let again = FeatureExtractor::new(net, small(&["blocks.4", "blocks.4.dw:16"])).unwrap();
        assert_eq!(again.extract(&x).unwrap().max_abs_diff(&b).unwrap(), 0.0);
    }

    /// `both`: each patch row is the `imagenet` row followed by the `per-image` row.
    #[test]
    fn both_views_are_the_two_single_views_side_by_side() {
        let Some(net) = lite0() else { return };
        let with = |norm| FeatureSpec {
            input_size: 64,
            input_norm: norm,
            ..spec(&["blocks.4", "blocks.10"])
        };
        let ex = |norm| FeatureExtractor::new(net.clone(), with(norm)).unwrap();
        let (a, b, both) = (
            ex(InputNorm::Imagenet),
            ex(InputNorm::PerImage),
            ex(InputNorm::Both),
        );
        assert_eq!((a.dim(), b.dim(), both.dim()), (152, 152, 304));
        assert_eq!(with(InputNorm::Both).geometry().unwrap(), (8, 304));
        let mut r = crate::rng::Rng::new(3);
        let x = Tensor::new(
            (0..2 * 3 * 64 * 64).map(|_| r.range(-2.0, 0.5)).collect(),
            &[2, 3, 64, 64],
        )
        .unwrap();
        let (fa, fb, f2) = (
            a.extract(&x).unwrap(),
            b.extract(&x).unwrap(),
            both.extract(&x).unwrap(),
        );
        assert_eq!(f2.shape(), &[2, 64, 304]);
        for p in 0..2 * 64 {
            let row = &f2.f32s()[p * 304..(p + 1) * 304];
            assert_eq!(&row[..152], &fa.f32s()[p * 152..(p + 1) * 152]);
            assert_eq!(&row[152..], &fb.f32s()[p * 152..(p + 1) * 152]);
        }
        assert_ne!(fa.f32s(), fb.f32s());
        assert_eq!("both".parse::<InputNorm>(), Ok(InputNorm::Both));
    }
}
