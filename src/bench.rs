//! A small timing suite for the CPU kernels and the backbone, shared by `pmad bench`, the
//! criterion benches in `benches/` and `scripts/bench_vs_torch.py` (which reads each case's
//! [`Spec`] from `pmad bench --list --json -` and rebuilds the same computation in PyTorch).
//! Shapes are defined once, in [`cases`].
//!
//! Each [`Case`] is a name, a [`Spec`] (the problem size, serialised to JSON) and a
//! [`Case::prepare`] step that allocates inputs (untimed) and returns the closure to time.
//! [`measure`] warms up, then calls the closure until [`Timing::min_time_s`] seconds have
//! passed (and at least [`Timing::min_iters`] calls, at most [`Timing::max_iters`]), timing
//! every call on its own; it reports the median. Throughput is work / median: GFLOP/s for the
//! kernels (a multiply-add counts 2 FLOPs) and images/s for the backbone.
//!
//! Threads: every kernel uses rayon's global pool (`pmad --threads N`, or `RAYON_NUM_THREADS`).

use crate::error::{Error, Result};
use crate::models::EfficientNetLite0;
use crate::models::efficientnet::{WEIGHTS_FILE, default_weights_dir};
use crate::ops::attention::{AttnShape, attention_backward, attention_forward};
use crate::ops::conv::{Activation, ConvShape, Padding, conv2d_into};
use crate::ops::matmul::{Trans, gemm};
use crate::ops::nn_search::{BankIndex, nearest_rows, row_sq_norms};
use crate::rng::Rng;
use crate::tensor::Tensor;
use serde::Serialize;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

/// Problem size of one case. Serialised with a `kind` tag, e.g.
/// `{"kind":"gemm","m":1024,"n":1024,"k":1024}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Spec {
    /// `C[m,n] = A[m,k] · B[k,n]`, row-major f32, no transposes.
    Gemm { m: usize, n: usize, k: usize },
    /// Fused multi-head attention forward, `q, k, v, o` laid out `[batch, tokens, heads*head_dim]`.
    Attention {
        batch: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    },
    /// The attention backward (training): `dQ, dK, dV` from `dO`, given the forward's `O` and
    /// log-sum-exp (computed once, untimed). Same layout as [`Spec::Attention`].
    AttentionBackward {
        batch: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    },
    /// NCHW conv with bias and an optional ReLU6; `pad` is `[top, bottom, left, right]`
    /// (TF "SAME", asymmetric for stride 2). Input is unpadded: the kernel pads internally.
    Conv {
        batch: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        pad: [usize; 4],
        relu6: bool,
    },
    /// Nearest bank row of each query (squared L2); bank norms are precomputed (untimed).
    Nearest {
        queries: usize,
        bank: usize,
        dim: usize,
    },
    /// Nearest bank row on clustered, low-rank data shaped like real patch features (where
    /// the index's bounds bite; on uniform noise nothing can be pruned), by brute force or
    /// through a prebuilt [`BankIndex`] (built untimed). Work is counted as the brute force's
    /// `2·Q·P·D`, so the two cases' GFLOP/s compare directly as speed.
    ClusteredNearest {
        queries: usize,
        bank: usize,
        dim: usize,
        indexed: bool,
    },
    /// EfficientNet-Lite0 on `[batch, 3, size, size]`: the full pass to logits when `tap` is
    /// `None`, else only as far as that tap (what anomaly detection runs).
    Backbone {
        batch: usize,
        size: usize,
        tap: Option<String>,
    },
    /// The production patch-feature extraction of `inspect` and `register` on
    /// `[batch, 3, size, size]` (`models::efficientnet_infer` on the CPU op set, default
    /// feature spec: Lite0 blocks.4 + blocks.10, resampled to 28x28, 3x3 pooled, 152-d rows).
    Features { batch: usize, size: usize },
}

impl Spec {
    /// Work of one call, in the unit of [`Spec::unit`] before scaling: FLOPs (2 per
    /// multiply-add) for kernels, images for the backbone.
    pub fn work(&self) -> f64 {
        match self {
            Spec::Gemm { m, n, k } => 2.0 * (m * n * k) as f64,
            // Q·Kᵀ and P·V, each 2·N·N·D per (batch, head); the softmax is not counted.
            Spec::Attention {
                batch,
                tokens,
                heads,
                head_dim,
            } => 4.0 * (batch * heads * tokens * tokens * head_dim) as f64,
            // dV = Pᵀ dO, dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q: 4 · 2·N·N·D per (batch, head).
            // Recomputing S (pmad does, from the lse) and the softmax are not counted.
            Spec::AttentionBackward {
                batch,
                tokens,
                heads,
                head_dim,
            } => 8.0 * (batch * heads * tokens * tokens * head_dim) as f64,
            Spec::Conv { .. } => 2.0 * self.conv_shape().macs() as f64,
            // The cross term q·p dominates; norms and the argmin are not counted.
            Spec::Nearest { queries, bank, dim }
            | Spec::ClusteredNearest {
                queries, bank, dim, ..
            } => 2.0 * (queries * bank * dim) as f64,
            Spec::Backbone { batch, .. } | Spec::Features { batch, .. } => *batch as f64,
        }
    }

    /// `"GFLOP/s"` or `"images/s"`.
    pub fn unit(&self) -> &'static str {
        match self {
            Spec::Backbone { .. } | Spec::Features { .. } => "images/s",
            _ => "GFLOP/s",
        }
    }

    /// Throughput of one call taking `seconds`, in [`Spec::unit`].
    pub fn throughput(&self, seconds: f64) -> f64 {
        match self {
            Spec::Backbone { .. } | Spec::Features { .. } => self.work() / seconds,
            _ => self.work() / seconds / 1e9,
        }
    }

    /// The `ConvShape` of a `Conv` spec (panics on other kinds).
    pub fn conv_shape(&self) -> ConvShape {
        match *self {
            Spec::Conv {
                batch,
                c_in,
                h,
                w,
                c_out,
                kernel,
                stride,
                groups,
                pad,
                ..
            } => ConvShape {
                batch,
                c_in,
                h,
                w,
                c_out,
                kh: kernel,
                kw: kernel,
                stride,
                groups,
                pad: Padding {
                    top: pad[0],
                    bottom: pad[1],
                    left: pad[2],
                    right: pad[3],
                },
            },
            _ => panic!("conv_shape of a non-conv spec {self:?}"),
        }
    }
}

/// One named benchmark.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub spec: Spec,
}

/// The closure a case times: one call = one unit of [`Spec::work`].
pub type Timed = Box<dyn FnMut()>;

/// What `prepare` and `measure` need besides the case itself.
#[derive(Clone, Debug)]
pub struct Config {
    /// Backbone weights (`.safetensors`); backbone cases are skipped when it is missing.
    pub weights: PathBuf,
    pub timing: Timing,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            weights: default_weights_dir().join(WEIGHTS_FILE),
            timing: Timing::default(),
        }
    }
}

/// The stopping rule of [`measure`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    /// Warm-up: calls (untimed) until this many seconds have passed, at least one.
    pub warmup_s: f64,
    /// Timed calls until their total reaches this many seconds ...
    pub min_time_s: f64,
    /// ... and at least this many calls ...
    pub min_iters: usize,
    /// ... but never more than this many.
    pub max_iters: usize,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            warmup_s: 0.2,
            min_time_s: 1.0,
            min_iters: 3,
            max_iters: 1000,
        }
    }
}

/// Outcome of one case.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub name: String,
    pub spec: Spec,
    /// `"GFLOP/s"` or `"images/s"`.
    pub unit: &'static str,
    /// FLOPs (kernels) or images (backbone) per call.
    pub work: f64,
    /// Timed calls.
    pub iters: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    /// `work / median_s`, in `unit`.
    pub throughput: f64,
    /// rayon threads the kernels ran on.
    pub threads: usize,
}

fn gemm_case(n: usize) -> Case {
    Case {
        name: format!("gemm_{n}"),
        spec: Spec::Gemm { m: n, n, k: n },
    }
}

fn attention_backward_case(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> Case {
    Case {
        name: format!("attention_backward_b{batch}_n{tokens}_h{heads}_d{head_dim}"),
        spec: Spec::AttentionBackward {
            batch,
            tokens,
            heads,
            head_dim,
        },
    }
}

fn attention_case(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> Case {
    Case {
        name: format!("attention_b{batch}_n{tokens}_h{heads}_d{head_dim}"),
        spec: Spec::Attention {
            batch,
            tokens,
            heads,
            head_dim,
        },
    }
}

/// Depthwise `kernel x kernel` conv with stride, ReLU6, on `channels` maps of `size x size`.
fn dwconv_case(kernel: usize, stride: usize, channels: usize, size: usize) -> Case {
    let p = Padding::tf_same(size, size, kernel, stride);
    Case {
        name: format!("dwconv_k{kernel}s{stride}_c{channels}_{size}"),
        spec: Spec::Conv {
            batch: BATCH,
            c_in: channels,
            h: size,
            w: size,
            c_out: channels,
            kernel,
            stride,
            groups: channels,
            pad: [p.top, p.bottom, p.left, p.right],
            relu6: true,
        },
    }
}

/// Pointwise (1x1) conv `c_in -> c_out` at `size x size`; `relu6` for an expand conv, none for
/// a (linear) project conv.
fn pwconv_case(c_in: usize, c_out: usize, size: usize, relu6: bool) -> Case {
    Case {
        name: format!("pwconv_{c_in}to{c_out}_{size}"),
        spec: Spec::Conv {
            batch: BATCH,
            c_in,
            h: size,
            w: size,
            c_out,
            kernel: 1,
            stride: 1,
            groups: 1,
            pad: [0; 4],
            relu6,
        },
    }
}

/// Batch of every conv and backbone case (the anomaly-detection batch).
pub const BATCH: usize = 8;
/// Backbone input side.
pub const IMAGE_SIZE: usize = 224;

/// Every case, in the order `pmad bench` runs them. The conv shapes are layers of
/// EfficientNet-Lite0 at 224x224 (batch 8); `blocks.N` below is the 0-based MBConv index.
pub fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = [256, 512, 1024, 2048].into_iter().map(gemm_case).collect();
    v.push(attention_case(8, 196, 6, 64));
    v.push(attention_case(8, 196, 12, 64));
    v.push(attention_backward_case(8, 196, 6, 64));
    v.push(attention_backward_case(8, 196, 12, 64));
    // The stem: 3x3 stride 2, 3 -> 32 (the im2col path), TF-SAME pads bottom/right only.
    let stem_pad = Padding::tf_same(IMAGE_SIZE, IMAGE_SIZE, 3, 2);
    v.push(Case {
        name: "conv_k3s2_3to32_224".into(),
        spec: Spec::Conv {
            batch: BATCH,
            c_in: 3,
            h: IMAGE_SIZE,
            w: IMAGE_SIZE,
            c_out: 32,
            kernel: 3,
            stride: 2,
            groups: 1,
            pad: [stem_pad.top, stem_pad.bottom, stem_pad.left, stem_pad.right],
            relu6: true,
        },
    });
    v.push(dwconv_case(3, 2, 96, 112)); // blocks.1 depthwise (asymmetric padding)
    v.push(dwconv_case(3, 1, 144, 56)); // blocks.2 depthwise
    v.push(dwconv_case(5, 1, 480, 14)); // blocks.8 depthwise
    v.push(dwconv_case(5, 1, 672, 14)); // blocks.9-10 depthwise
    v.push(pwconv_case(24, 144, 56, true)); // blocks.2 expand
    v.push(pwconv_case(144, 24, 56, false)); // blocks.2 project
    v.push(pwconv_case(112, 672, 14, true)); // blocks.9 expand
    v.push(pwconv_case(672, 112, 14, false)); // blocks.9 project
    v.push(Case {
        name: "nn_784x16384x272".into(),
        spec: Spec::Nearest {
            queries: 784,
            bank: 16384,
            dim: 272,
        },
    });
    // One image's patches against a bottle-sized bank, brute force vs index, same data.
    for indexed in [false, true] {
        v.push(Case {
            name: format!(
                "nn_{}_clustered_784x14000x152",
                if indexed { "index" } else { "brute" }
            ),
            spec: Spec::ClusteredNearest {
                queries: 784,
                bank: 14000,
                dim: 152,
                indexed,
            },
        });
    }
    v.push(Case {
        name: format!("backbone_b{BATCH}_{IMAGE_SIZE}"),
        spec: Spec::Backbone {
            batch: BATCH,
            size: IMAGE_SIZE,
            tap: None,
        },
    });
    // Batch 8 (throughput) and batch 1 (latency: an inspection line's one image): the
    // reference forward to blocks.10 (what the peers' scripts compare with) and what
    // `inspect` runs on the CPU before the search.
    for batch in [BATCH, 1] {
        v.push(Case {
            name: format!("backbone_taps10_b{batch}_{IMAGE_SIZE}"),
            spec: Spec::Backbone {
                batch,
                size: IMAGE_SIZE,
                tap: Some("blocks.10".into()),
            },
        });
        v.push(Case {
            name: format!("features_b{batch}_{IMAGE_SIZE}"),
            spec: Spec::Features {
                batch,
                size: IMAGE_SIZE,
            },
        });
    }
    v
}

/// The cases whose name contains `filter` (all of them for `None`).
pub fn select(filter: Option<&str>) -> Vec<Case> {
    cases()
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        .collect()
}

/// `n` values uniform in [-1, 1), reproducible.
/// `n` rows of `dim` drawn like patch features: one of 64 cluster centres, plus a point of a
/// shared 16-dimensional subspace, plus small isotropic noise.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    const CLUSTERS: usize = 64;
    const RANK: usize = 16;
    let centres = random(CLUSTERS * dim, 101);
    let basis = random(RANK * dim, 102);
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = &centres[rng.below(CLUSTERS) * dim..][..dim];
        let w: Vec<f32> = (0..RANK).map(|_| rng.normal() * 0.5).collect();
        for k in 0..dim {
            let low: f32 = (0..RANK).map(|r| w[r] * basis[r * dim + k]).sum();
            out.push(2.0 * c[k] + low + 0.05 * rng.normal());
        }
    }
    out
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.range(-1.0, 1.0)).collect()
}

impl Case {
    /// Allocates the inputs (and loads the backbone) and returns the closure to time.
    /// Fails for a backbone case when the weights file is missing.
    pub fn prepare(&self, cfg: &Config) -> Result<Timed> {
        let f: Timed = match self.spec.clone() {
            Spec::Gemm { m, n, k } => {
                let (a, b) = (random(m * k, 1), random(k * n, 2));
                let mut c = vec![0.0f32; m * n];
                Box::new(move || {
                    gemm(m, n, k, &a, Trans::N, &b, Trans::N, &mut c, 0.0);
                    black_box(&mut c);
                })
            }
            Spec::Attention {
                batch,
                tokens,
                heads,
                head_dim,
            } => {
                let s = AttnShape {
                    batch,
                    tokens,
                    heads,
                    head_dim,
                };
                let numel = batch * tokens * heads * head_dim;
                let (q, k, v) = (random(numel, 1), random(numel, 2), random(numel, 3));
                let mut o = vec![0.0f32; numel];
                let mut lse = vec![0.0f32; batch * heads * tokens];
                Box::new(move || {
                    attention_forward(&q, &k, &v, s, &mut o, &mut lse);
                    black_box((&mut o, &mut lse));
                })
            }
            Spec::AttentionBackward {
                batch,
                tokens,
                heads,
                head_dim,
            } => {
                let s = AttnShape {
                    batch,
                    tokens,
                    heads,
                    head_dim,
                };
                let numel = batch * tokens * heads * head_dim;
                let (q, k, v) = (random(numel, 1), random(numel, 2), random(numel, 3));
                let d_o = random(numel, 4);
                let mut o = vec![0.0f32; numel];
                let mut lse = vec![0.0f32; batch * heads * tokens];
                attention_forward(&q, &k, &v, s, &mut o, &mut lse);
                let (mut dq, mut dk, mut dv) = (
                    vec![0.0f32; numel],
                    vec![0.0f32; numel],
                    vec![0.0f32; numel],
                );
                Box::new(move || {
                    attention_backward(&q, &k, &v, &o, &lse, &d_o, s, &mut dq, &mut dk, &mut dv);
                    black_box((&mut dq, &mut dk, &mut dv));
                })
            }
            Spec::Conv { relu6, .. } => {
                let s = self.spec.conv_shape();
                let x = random(s.batch * s.c_in * s.h * s.w, 1);
                let w = random(s.c_out * (s.c_in / s.groups) * s.kh * s.kw, 2);
                let bias = random(s.c_out, 3);
                let act = if relu6 {
                    Activation::Relu6
                } else {
                    Activation::None
                };
                let mut y = vec![0.0f32; s.batch * s.c_out * s.out_h() * s.out_w()];
                Box::new(move || {
                    conv2d_into(&x, &w, Some(&bias), &s, act, &mut y);
                    black_box(&mut y);
                })
            }
            Spec::Nearest { queries, bank, dim } => {
                let q = random(queries * dim, 1);
                let p = random(bank * dim, 2);
                let p_sq = row_sq_norms(&p, dim);
                Box::new(move || {
                    black_box(nearest_rows(&q, &p, &p_sq, dim));
                })
            }
            Spec::ClusteredNearest {
                queries,
                bank,
                dim,
                indexed,
            } => {
                let q = clustered(queries, dim, 1);
                let p = clustered(bank, dim, 2);
                if indexed {
                    let index = BankIndex::build(&p, dim);
                    Box::new(move || {
                        black_box(index.nearest(&q));
                    })
                } else {
                    let p_sq = row_sq_norms(&p, dim);
                    Box::new(move || {
                        black_box(nearest_rows(&q, &p, &p_sq, dim));
                    })
                }
            }
            Spec::Backbone { batch, size, tap } => {
                need_weights(&cfg.weights)?;
                let net = EfficientNetLite0::load(&cfg.weights)?;
                let x = Tensor::new(random(batch * 3 * size * size, 1), &[batch, 3, size, size])?;
                match tap {
                    None => Box::new(move || {
                        black_box(net.forward(&x).expect("backbone forward"));
                    }),
                    Some(t) => Box::new(move || {
                        black_box(net.forward_taps(&x, &[t.as_str()]).expect("backbone taps"));
                    }),
                }
            }
            Spec::Features { batch, size } => {
                need_weights(&cfg.weights)?;
                let net = std::sync::Arc::new(EfficientNetLite0::load(&cfg.weights)?);
                let spec = crate::detector::features::FeatureSpec::default();
                let fx = crate::detector::features::FeatureExtractor::new(net, spec)?;
                let x = Tensor::new(random(batch * 3 * size * size, 1), &[batch, 3, size, size])?;
                Box::new(move || {
                    black_box(fx.extract(&x).expect("feature extraction"));
                })
            }
        };
        Ok(f)
    }
}

/// An error (the case is skipped) when the backbone weights are missing.
fn need_weights(weights: &std::path::Path) -> Result<()> {
    if weights.exists() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{}: backbone weights not found, skipping the backbone cases; run `pmad fetch-weights` \
         first",
        weights.display()
    )))
}

/// Median of a non-empty list (mean of the middle two for an even length).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        0.5 * (v[mid - 1] + v[mid])
    }
}

/// Warms `f` up, then times calls one by one under the rule of `timing`.
pub fn measure(case: &Case, f: &mut dyn FnMut(), timing: &Timing) -> BenchResult {
    let start = Instant::now();
    loop {
        f();
        if start.elapsed().as_secs_f64() >= timing.warmup_s {
            break;
        }
    }
    let mut times = Vec::new();
    let mut total = 0.0;
    while times.len() < timing.max_iters.max(1)
        && (total < timing.min_time_s || times.len() < timing.min_iters)
    {
        let t = Instant::now();
        f();
        let dt = t.elapsed().as_secs_f64();
        times.push(dt);
        total += dt;
    }
    let med = median(&times);
    BenchResult {
        name: case.name.clone(),
        spec: case.spec.clone(),
        unit: case.spec.unit(),
        work: case.spec.work(),
        iters: times.len(),
        median_s: med,
        min_s: times.iter().copied().fold(f64::INFINITY, f64::min),
        max_s: times.iter().copied().fold(0.0, f64::max),
        throughput: case.spec.throughput(med),
        threads: rayon::current_num_threads(),
    }
}

/// Prepares and measures one case; `Err` when it cannot be prepared (backbone weights missing).
pub fn run_case(case: &Case, cfg: &Config) -> Result<BenchResult> {
    let mut f = case.prepare(cfg)?;
    Ok(measure(case, &mut f, &cfg.timing))
}

/// Runs the cases whose name contains `filter` with the default config (default weights
/// path, ~1 s per case). Cases that cannot be prepared are reported on stderr and left out.
pub fn run(filter: Option<&str>) -> Vec<BenchResult> {
    run_with(filter, &Config::default())
}

/// [`run`] with an explicit config.
pub fn run_with(filter: Option<&str>, cfg: &Config) -> Vec<BenchResult> {
    let mut out = Vec::new();
    for case in select(filter) {
        match run_case(&case, cfg) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!("skipping {}: {e}", case.name),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_no_name_contains_another() {
        // `pmad bench --filter NAME` must select exactly that case.
        let all = cases();
        for a in &all {
            let hits: Vec<_> = all
                .iter()
                .filter(|b| b.name.contains(a.name.as_str()))
                .collect();
            assert_eq!(
                hits.len(),
                1,
                "{} is selected together with {:?}",
                a.name,
                hits
            );
        }
    }

    #[test]
    fn conv_specs_are_consistent() {
        for c in cases() {
            if let Spec::Conv { h, stride, .. } = c.spec {
                let s = c.spec.conv_shape();
                assert_eq!(
                    s.out_h(),
                    h.div_ceil(stride),
                    "{}: TF-SAME output size",
                    c.name
                );
            }
        }
    }

    #[test]
    fn measure_reports_the_median_and_throughput() {
        let case = gemm_case(8);
        let mut f = case.prepare(&Config::default()).unwrap();
        let timing = Timing {
            warmup_s: 0.0,
            min_time_s: 0.0,
            min_iters: 5,
            max_iters: 5,
        };
        let r = measure(&case, &mut f, &timing);
        assert_eq!(r.iters, 5);
        assert!(r.min_s <= r.median_s && r.median_s <= r.max_s);
        assert!((r.throughput - 2.0 * 512.0 / r.median_s / 1e9).abs() < 1e-6 * r.throughput);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn spec_json_has_a_kind_tag() {
        let j = serde_json::to_value(Spec::Gemm { m: 1, n: 2, k: 3 }).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"kind": "gemm", "m": 1, "n": 2, "k": 3})
        );
    }

    #[test]
    fn every_kernel_case_prepares_and_runs_once() {
        // Small stand-ins for each kind (the real shapes take seconds under a debug build).
        let small = [
            Spec::Attention {
                batch: 1,
                tokens: 5,
                heads: 2,
                head_dim: 4,
            },
            Spec::AttentionBackward {
                batch: 1,
                tokens: 5,
                heads: 2,
                head_dim: 4,
            },
            Spec::Nearest {
                queries: 3,
                bank: 7,
                dim: 4,
            },
            Spec::ClusteredNearest {
                queries: 5,
                bank: 300,
                dim: 6,
                indexed: true,
            },
        ];
        let mut list: Vec<Case> = small
            .into_iter()
            .map(|spec| Case {
                name: "small".into(),
                spec,
            })
            .collect();
        list.push(Case {
            name: "dw".into(),
            spec: dwconv_case(3, 2, 2, 9).spec,
        });
        list.push(Case {
            name: "pw".into(),
            spec: pwconv_case(3, 4, 5, false).spec,
        });
        for c in list {
            let mut f = c.prepare(&Config::default()).unwrap();
            f();
        }
    }

    #[test]
    fn missing_weights_skip_backbone_cases() {
        let cfg = Config {
            weights: "/nonexistent/w.safetensors".into(),
            timing: Timing::default(),
        };
        let case = select(Some("backbone_b8_224")).remove(0);
        let msg = case.prepare(&cfg).err().expect("no weights").to_string();
        assert!(msg.contains("pmad fetch-weights"), "{msg}");
    }
}
