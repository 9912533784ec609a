//! EfficientNet-Lite0/1/2 (the TF `efficientnet/lite` networks), inference only, with their
//! intermediate maps exposed as taps (`stem`, `blocks.N`) for feature extraction.
//!
//! Architecture: stem conv3x3/2 (3->32) + BN + ReLU6; MBConv blocks without squeeze-excite,
//! ReLU6 throughout; head conv1x1 (last stage -> 1280) + BN + ReLU6, global mean, FC 1280->1000.
//! Each MBConv: [expand 1x1 + BN + ReLU6] -> depthwise kxk/s + BN + ReLU6 -> project 1x1 + BN
//! (linear bottleneck, no activation) -> identity skip when stride 1 and in == out.
//! Padding is TF "SAME" (asymmetric for stride 2), BatchNorm eps is 1e-3. BN is folded into the
//! convs at load time, so each conv is one pass with a fused bias + activation.
//! Weight names follow `efficientnet_pytorch` (`_conv_stem.weight`, `_blocks.3._bn1.running_var`).
//!
//! The block list of each variant is derived from the B0 stage table and the variant's width /
//! depth multipliers exactly as the EfficientNet code does (`round_filters`, `round_repeats`),
//! with the Lite rules: the stem stays at 32 and the head at 1280 channels, and the first and
//! last stages keep one block. Checked against the released checkpoints' shapes:
//! Lite0 16 blocks (stages 16/24/40/80/112/192/320 x 1/2/2/3/3/4/1), Lite1 21 blocks
//! (same widths x 1/3/3/4/4/5/1), Lite2 21 blocks (16/24/48/88/120/208/352 x 1/3/3/4/4/5/1).

use crate::error::{Error, Result};
use crate::ops::conv::{Activation, ConvShape, Padding, conv2d_into, fold_batchnorm};
use crate::ops::matmul::linear_rows;
use crate::ops::mbconv::{Layer, MbConvShape, mbconv};
use crate::ops::spare;
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BN_EPS: f32 = 1e-3;

/// One B0 stage: (kernel, stride, expand ratio, in channels, out channels, repeats).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
];

/// Lite variants do not scale the stem or the head.
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// Blocks of EfficientNet-Lite0 (the other variants: [`Backbone::num_blocks`]).
pub const NUM_BLOCKS: usize = 16;
pub const NUM_CLASSES: usize = 1000;

/// Which EfficientNet-Lite variant.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    #[default]
    Lite0,
    Lite1,
    Lite2,
}

impl Backbone {
    pub const ALL: [Backbone; 3] = [Backbone::Lite0, Backbone::Lite1, Backbone::Lite2];

    /// `lite0`, `lite1`, `lite2` (command line, model.json).
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Lite0 => "lite0",
            Backbone::Lite1 => "lite1",
            Backbone::Lite2 => "lite2",
        }
    }

    /// (width multiplier, depth multiplier, ImageNet resolution) of the Lite definition.
    pub fn params(self) -> (f64, f64, usize) {
        match self {
            Backbone::Lite0 => (1.0, 1.0, 224),
            Backbone::Lite1 => (1.0, 1.1, 240),
            Backbone::Lite2 => (1.1, 1.2, 260),
        }
    }

    /// The input side the network was trained at (what `classify` feeds it).
    pub fn resolution(self) -> usize {
        self.params().2
    }

    /// File name of the converted weights in the weights folder.
    pub fn weights_file(self) -> &'static str {
        match self {
            Backbone::Lite0 => "efficientnet_lite0.safetensors",
            Backbone::Lite1 => "efficientnet_lite1.safetensors",
            Backbone::Lite2 => "efficientnet_lite2.safetensors",
        }
    }

    pub fn num_blocks(self) -> usize {
        block_specs(self).len()
    }

    /// The default feature taps: the last blocks of stages 3 (stride 8) and 5 (stride 16).
    pub fn default_taps(self) -> Vec<String> {
        let specs = block_specs(self);
        let last_of = |stage: usize| {
            specs
                .iter()
                .rposition(|b| b.stage == stage)
                .expect("every stage has a block")
        };
        vec![
            format!("blocks.{}", last_of(2)),
            format!("blocks.{}", last_of(4)),
        ]
    }

    /// Output channels of each tap, and its stride relative to the input.
    pub fn tap_channels_and_stride(self, tap: &str) -> Option<(usize, usize)> {
        let specs = block_specs(self);
        // Stride of block n's output (the stem halves the input).
        let stride_after = |n: usize| 2 * specs[..=n].iter().map(|b| b.stride).product::<usize>();
        match TapPoint::parse(tap)? {
            TapPoint::Stem => Some((STEM_CHANNELS, 2)),
            TapPoint::Block(n) => Some((specs.get(n)?.c_out, stride_after(n))),
            // The expand conv is 1x1/1: it runs at the block's input resolution.
            TapPoint::Expand(n) => {
                let b = specs.get(n)?;
                let stride_in = if n == 0 { 2 } else { stride_after(n - 1) };
                (b.expand != 1).then_some((b.c_in * b.expand, stride_in))
            }
            TapPoint::Depthwise(n) => {
                let b = specs.get(n)?;
                Some((b.c_in * b.expand, stride_after(n)))
            }
        }
    }
}

/// Where a tap reads inside the network. Block outputs (`blocks.N`) are the narrow linear
/// bottlenecks; the two inner points of an inverted-residual block are its wide expanded
/// activations (ReLU6, `expand` x the block's input channels): `blocks.N.expand` after the 1x1
/// expand conv (at the block's input resolution; absent in blocks with expand ratio 1) and
/// `blocks.N.dw` after the depthwise conv (at its output resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapPoint {
    Stem,
    Block(usize),
    Expand(usize),
    Depthwise(usize),
}

impl TapPoint {
    /// `stem`, `blocks.N`, `blocks.N.expand` or `blocks.N.dw` (the block index unchecked).
    pub fn parse(tap: &str) -> Option<TapPoint> {
        if tap == "stem" {
            return Some(TapPoint::Stem);
        }
        let rest = tap.strip_prefix("blocks.")?;
        let (n, inner) = match rest.split_once('.') {
            Some((n, inner)) => (n, Some(inner)),
            None => (rest, None),
        };
        let n: usize = n.parse().ok()?;
        match inner {
            None => Some(TapPoint::Block(n)),
            Some("expand") => Some(TapPoint::Expand(n)),
            Some("dw") => Some(TapPoint::Depthwise(n)),
            Some(_) => None,
        }
    }

    /// The block this point lies in (`None`: the stem).
    pub fn block(self) -> Option<usize> {
        match self {
            TapPoint::Stem => None,
            TapPoint::Block(n) | TapPoint::Expand(n) | TapPoint::Depthwise(n) => Some(n),
        }
    }
}

impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backbone {
    type Err = Error;
    fn from_str(s: &str) -> Result<Backbone> {
        Backbone::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown backbone '{s}' (use lite0, lite1 or lite2)"
                ))
            })
    }
}

/// Output channels of each Lite0 tap, and its stride relative to the input.
pub fn tap_channels_and_stride(tap: &str) -> Option<(usize, usize)> {
    Backbone::Lite0.tap_channels_and_stride(tap)
}

/// `round_filters` of the EfficientNet code: scale by the width multiplier and round to a
/// multiple of 8, never going below 90% of the scaled value.
fn round_filters(c: usize, width: f64) -> usize {
    let scaled = c as f64 * width;
    let mut r = (((scaled + 4.0) as usize) / 8 * 8).max(8);
    if (r as f64) < 0.9 * scaled {
        r += 8;
    }
    r
}

/// `round_repeats`: ceil(depth * repeats).
fn round_repeats(r: usize, depth: f64) -> usize {
    (depth * r as f64).ceil() as usize
}

#[derive(Clone, Copy, Debug)]
struct BlockSpec {
    stage: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    c_in: usize,
    c_out: usize,
}

fn block_specs(backbone: Backbone) -> Vec<BlockSpec> {
    let (width, depth, _) = backbone.params();
    let last = STAGES.len() - 1;
    let mut v = Vec::new();
    for (stage, (k, s, e, cin, cout, r)) in STAGES.into_iter().enumerate() {
        // Lite: the stem (the first stage's input) is not scaled, nor are the first and last
        // stages' repeats.
        let cin = if stage == 0 {
            STEM_CHANNELS
        } else {
            round_filters(cin, width)
        };
        let cout = round_filters(cout, width);
        let r = if stage == 0 || stage == last {
            r
        } else {
            round_repeats(r, depth)
        };
        for i in 0..r {
            v.push(BlockSpec {
                stage,
                kernel: k,
                stride: if i == 0 { s } else { 1 },
                expand: e,
                c_in: if i == 0 { cin } else { cout },
                c_out: cout,
            });
        }
    }
    v
}

/// A conv with BatchNorm folded in: weights `[c_out, c_in/groups, k, k]`, bias `[c_out]`.
/// (Fields crate-visible, buffers shared: the feature extractor
/// ([`super::efficientnet_infer`]) hands them to a backend, which shares or uploads them.)
pub(crate) struct ConvBn {
    pub(crate) weight: Arc<Vec<f32>>,
    pub(crate) bias: Arc<Vec<f32>>,
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) groups: usize,
    pub(crate) act: Activation,
}

impl ConvBn {
    /// Weights, bias and activation, as the fused block takes them.
    fn layer(&self) -> Layer<'_> {
        Layer {
            weight: &self.weight,
            bias: &self.bias,
            act: self.act,
        }
    }

    /// Runs on `[B, c_in, h, w]` with TF-SAME padding; returns the output and its size.
    fn run(&self, x: &[f32], batch: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        let s = ConvShape {
            batch,
            c_in: self.c_in,
            h,
            w,
            c_out: self.c_out,
            kh: self.kernel,
            kw: self.kernel,
            stride: self.stride,
            groups: self.groups,
            pad: Padding::tf_same(h, w, self.kernel, self.stride),
        };
        // `conv2d_into` writes every value: a spare map serves (`ops::spare`).
        let mut y = spare::take(batch * self.c_out * s.out_h() * s.out_w());
        conv2d_into(x, &self.weight, Some(&self.bias[..]), &s, self.act, &mut y);
        (y, s.out_h(), s.out_w())
    }
}

pub(crate) struct MbConv {
    pub(crate) expand: Option<ConvBn>,
    pub(crate) depthwise: ConvBn,
    pub(crate) project: ConvBn,
    pub(crate) skip: bool,
}

impl MbConv {
    /// The block as its convs, calling `tap` with its inner maps (`blocks.{i}.expand`,
    /// `blocks.{i}.dw`).
    fn run_tapped(
        &self,
        i: usize,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        tap: TapFn<'_>,
    ) -> (Vec<f32>, usize, usize) {
        let expanded = self.expand.as_ref().map(|e| {
            let (v, eh, ew) = e.run(x, batch, h, w);
            tap(&format!("blocks.{i}.expand"), &v, [batch, e.c_out, eh, ew]);
            (v, eh, ew)
        });
        let (input, eh, ew) = match &expanded {
            Some((v, eh, ew)) => (&v[..], *eh, *ew),
            None => (x, h, w),
        };
        let (dw, dh, dww) = self.depthwise.run(input, batch, eh, ew);
        let c_mid = self.depthwise.c_out;
        tap(&format!("blocks.{i}.dw"), &dw, [batch, c_mid, dh, dww]);
        let (mut y, ph, pw) = self.project.run(&dw, batch, dh, dww);
        if self.skip {
            y.iter_mut().zip(x).for_each(|(a, r)| *a += r);
        }
        // The maps this block is done with serve later outputs.
        spare::give(dw);
        if let Some((v, _, _)) = expanded {
            spare::give(v);
        }
        (y, ph, pw)
    }

    /// The block fused on bands of rows (`crate::ops::mbconv`), or `None` for a block
    /// without an expansion (run as its convs).
    fn run_fused(
        &self,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
    ) -> Option<(Vec<f32>, usize, usize)> {
        let e = self.expand.as_ref()?;
        let (d, p) = (&self.depthwise, &self.project);
        let channels = [e.c_in, e.c_out, p.c_out];
        let s = MbConvShape::new(batch, (h, w), channels, (d.kernel, d.stride));
        let y = mbconv(x, [e.layer(), d.layer(), p.layer()], self.skip, &s);
        Some((y, s.out_h(), s.out_w()))
    }
}

/// Whether `taps` ask for an inner map (`blocks.{i}.expand` or `blocks.{i}.dw`) of block `i`.
fn wants_inner(taps: &[&str], i: usize) -> bool {
    taps.iter().any(|t| {
        matches!(TapPoint::parse(t), Some(TapPoint::Expand(n) | TapPoint::Depthwise(n)) if n == i)
    })
}

/// The pretrained network, BN folded, ready for inference.
pub struct EfficientNetLite {
    backbone: Backbone,
    pub(crate) stem: ConvBn,
    pub(crate) blocks: Vec<MbConv>,
    head: ConvBn,
    fc_weight: Vec<f32>,
    fc_bias: Vec<f32>,
}

/// Receives each intermediate map of a pass: (name, values, [B, C, h, w]).
type TapFn<'a> = &'a mut dyn FnMut(&str, &[f32], [usize; 4]);

/// Maps produced by a forward pass, by tap name, in the order they were asked for.
pub type Taps = Vec<(String, Tensor)>;

/// The former name, from when Lite0 was the only variant.
pub type EfficientNetLite0 = EfficientNetLite;

impl EfficientNetLite {
    /// Loads `efficientnet_liteN.safetensors` (as written by `pmad fetch-weights`); the
    /// variant is recognised from the tensors (block count, last stage width).
    pub fn load(path: &Path) -> Result<EfficientNetLite> {
        let st = crate::weights::SafeTensors::open(path)?;
        let backbone = Self::detect(&st).ok_or_else(|| {
            Error::format(
                path,
                "not EfficientNet-Lite0/1/2 weights (block count or head shape not recognised)",
            )
        })?;
        Self::load_as(path, backbone)
    }

    /// Loads `path` as `backbone`; every tensor's shape must match the block list derived for
    /// that variant, else the error names the variant, the file and the first mismatch.
    pub fn load_as(path: &Path, backbone: Backbone) -> Result<EfficientNetLite> {
        let st = crate::weights::SafeTensors::open(path)?;
        // Extra blocks would otherwise go unnoticed (only the expected names are read).
        let blocks = Self::count_blocks(&st);
        if blocks != Some(backbone.num_blocks()) {
            return Err(Error::format(
                path,
                format!(
                    "does not hold EfficientNet-{backbone} weights: {} blocks, expected {}",
                    blocks.unwrap_or(0),
                    backbone.num_blocks()
                ),
            ));
        }
        // The source's errors already name the file.
        Self::from_source_as(backbone, |name, shape| st.tensor_f32_checked(name, shape))
            .map_err(|e| Error::invalid(format!("not EfficientNet-{backbone} weights: {e}")))
    }

    /// Which variant a weights file holds, from its block count and head input width.
    fn detect(st: &crate::weights::SafeTensors) -> Option<Backbone> {
        let blocks = Self::count_blocks(st)?;
        let head_in = *st.info("_conv_head.weight")?.shape.get(1)?;
        Backbone::ALL.into_iter().find(|&b| {
            let specs = block_specs(b);
            specs.len() == blocks && specs.last().is_some_and(|s| s.c_out == head_in)
        })
    }

    /// 1 + the highest `_blocks.N` index among the tensor names.
    fn count_blocks(st: &crate::weights::SafeTensors) -> Option<usize> {
        st.names()
            .iter()
            .filter_map(|n| {
                n.strip_prefix("_blocks.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map(|m| m + 1)
    }

    /// Which variant this is.
    pub fn backbone(&self) -> Backbone {
        self.backbone
    }

    /// Builds EfficientNet-Lite0 from any weight source: `get(name, expected_shape)` must
    /// return that tensor or an error naming it.
    pub fn from_source(get: impl Fn(&str, &[usize]) -> Result<Tensor>) -> Result<EfficientNetLite> {
        Self::from_source_as(Backbone::Lite0, get)
    }

    /// [`from_source`](Self::from_source) for any variant.
    pub fn from_source_as(
        backbone: Backbone,
        get: impl Fn(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<EfficientNetLite> {
        let conv_bn = |conv: &str,
                       bn: &str,
                       c_in: usize,
                       c_out: usize,
                       k: usize,
                       stride: usize,
                       groups: usize,
                       act|
         -> Result<ConvBn> {
            let w = get(&format!("{conv}.weight"), &[c_out, c_in / groups, k, k])?;
            let p = |n: &str| get(&format!("{bn}.{n}"), &[c_out]);
            let (g, b, m, v) = (
                p("weight")?,
                p("bias")?,
                p("running_mean")?,
                p("running_var")?,
            );
            let (weight, bias) = fold_batchnorm(
                &w.f32s(),
                c_out,
                &g.f32s(),
                &b.f32s(),
                &m.f32s(),
                &v.f32s(),
                BN_EPS,
            );
            Ok(ConvBn {
                weight: Arc::new(weight),
                bias: Arc::new(bias),
                c_in,
                c_out,
                kernel: k,
                stride,
                groups,
                act,
            })
        };
        let specs = block_specs(backbone);
        let stem = conv_bn(
            "_conv_stem",
            "_bn0",
            3,
            STEM_CHANNELS,
            3,
            2,
            1,
            Activation::Relu6,
        )?;
        let mut blocks = Vec::with_capacity(specs.len());
        for (i, b) in specs.iter().enumerate() {
            let p = format!("_blocks.{i}");
            let mid = b.c_in * b.expand;
            let expand = if b.expand != 1 {
                Some(conv_bn(
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    b.c_in,
                    mid,
                    1,
                    1,
                    1,
                    Activation::Relu6,
                )?)
            } else {
                None
            };
            let depthwise = conv_bn(
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                mid,
                mid,
                b.kernel,
                b.stride,
                mid,
                Activation::Relu6,
            )?;
            let project = conv_bn(
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                mid,
                b.c_out,
                1,
                1,
                1,
                Activation::None,
            )?;
            blocks.push(MbConv {
                expand,
                depthwise,
                project,
                skip: b.stride == 1 && b.c_in == b.c_out,
            });
        }
        let last = specs.last().map_or(STEM_CHANNELS, |b| b.c_out);
        let head = conv_bn(
            "_conv_head",
            "_bn1",
            last,
            HEAD_CHANNELS,
            1,
            1,
            1,
            Activation::Relu6,
        )?;
        let fc_weight = get("_fc.weight", &[NUM_CLASSES, HEAD_CHANNELS])?.into_f32_vec();
        let fc_bias = get("_fc.bias", &[NUM_CLASSES])?.into_f32_vec();
        Ok(EfficientNetLite {
            backbone,
            stem,
            blocks,
            head,
            fc_weight,
            fc_bias,
        })
    }

    pub(crate) fn check_input(x: &Tensor) -> Result<()> {
        if x.rank() != 4 || x.dim(1) != 3 {
            return Err(Error::shape(format!(
                "EfficientNet-Lite expects an image batch [B, 3, H, W], got {:?}{}",
                x.shape(),
                if x.rank() == 4 {
                    format!(" ({} channels)", x.dim(1))
                } else {
                    String::new()
                }
            )));
        }
        if x.dim(2) < 32 || x.dim(3) < 32 {
            return Err(Error::shape(format!(
                "input {:?} is smaller than 32x32",
                x.shape()
            )));
        }
        Ok(())
    }

    /// Runs as far as the deepest requested tap and returns the tapped maps
    /// (`stem`, `blocks.0` .. `blocks.{N-1}`), each `[B, C, h, w]`.
    pub fn forward_taps(&self, x: &Tensor, taps: &[&str]) -> Result<Taps> {
        Self::check_input(x)?;
        let n_blocks = self.blocks.len();
        let mut depth = None::<usize>; // deepest block needed
        for t in taps {
            let point = TapPoint::parse(t).filter(|p| {
                let n = p.block();
                n.is_none_or(|n| n < n_blocks)
                    && !matches!(p, TapPoint::Expand(n) if self.blocks[*n].expand.is_none())
            });
            match point {
                Some(p) => {
                    if let Some(n) = p.block() {
                        depth = Some(depth.map_or(n, |d: usize| d.max(n)));
                    }
                }
                None => {
                    return Err(Error::invalid(format!(
                        "unknown tap '{t}' (use stem, blocks.N, blocks.N.expand or blocks.N.dw \
                         with N in 0..{n_blocks}; blocks.N.expand only where the block expands)"
                    )));
                }
            }
        }
        let mut out: Vec<Option<Tensor>> = vec![None; taps.len()];
        // Only the stem asked for: still stop as early as the pass allows.
        let depth = depth.or(Some(0));
        let inner = |i: usize| wants_inner(taps, i);
        self.run(x, depth, &inner, &mut |name, v, shape| {
            for (slot, want) in out.iter_mut().zip(taps) {
                if *want == name {
                    *slot = Some(Tensor::from_parts(v.to_vec(), shape.to_vec()));
                }
            }
        })?;
        Ok(taps
            .iter()
            .zip(out)
            .map(|(n, t)| (n.to_string(), t.expect("every tap is reached")))
            .collect())
    }

    /// ImageNet logits `[B, 1000]` (pre-softmax).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Self::check_input(x)?;
        self.run(x, None, &|_| false, &mut |_, _, _| {})
            .map(|l| l.expect("full pass yields logits"))
    }

    /// Same as [`forward`](Self::forward) but also returns the requested taps (one pass).
    pub fn forward_with_taps(&self, x: &Tensor, taps: &[&str]) -> Result<(Tensor, Taps)> {
        Self::check_input(x)?;
        let mut got: Taps = Vec::new();
        let inner = |i: usize| wants_inner(taps, i);
        let logits = self
            .run(x, None, &inner, &mut |name, v, shape| {
                if taps.contains(&name) {
                    got.push((
                        name.to_string(),
                        Tensor::from_parts(v.to_vec(), shape.to_vec()),
                    ));
                }
            })?
            .expect("full pass yields logits");
        got.sort_by_key(|(n, _)| taps.iter().position(|t| t == n));
        Ok((logits, got))
    }

    /// The pass itself. Stops after block `stop_after` when given (returning no logits);
    /// calls `tap(name, values, [B, C, h, w])` after the stem, after every block and at the
    /// two inner points of every block ([`TapPoint`]).
    fn run(
        &self,
        x: &Tensor,
        stop_after: Option<usize>,
        inner: &dyn Fn(usize) -> bool,
        tap: TapFn<'_>,
    ) -> Result<Option<Tensor>> {
        let batch = x.dim(0);
        let (mut cur, mut h, mut w) = self.stem.run(&x.f32s(), batch, x.dim(2), x.dim(3));
        tap("stem", &cur, [batch, STEM_CHANNELS, h, w]);
        for (i, b) in self.blocks.iter().enumerate() {
            // Nobody wants this block's inner maps: the block fused (its expanded map stays
            // in cache); else its convs one by one, tapping the inner maps.
            let fused = (!inner(i))
                .then(|| b.run_fused(&cur, batch, h, w))
                .flatten();
            let (y, ph, pw) = match fused {
                Some(out) => out,
                None => b.run_tapped(i, &cur, batch, h, w, tap),
            };
            // The map this block is done with serves later outputs.
            spare::give(std::mem::replace(&mut cur, y));
            (h, w) = (ph, pw);
            tap(&format!("blocks.{i}"), &cur, [batch, b.project.c_out, h, w]);
            if stop_after == Some(i) {
                spare::clear();
                return Ok(None);
            }
        }
        spare::clear();
        let (feat, hh, hw) = self.head.run(&cur, batch, h, w);
        // Global mean over the head maps, then the FC layer.
        let plane = hh * hw;
        let pooled: Vec<f32> = feat
            .chunks(plane)
            .map(|p| p.iter().sum::<f32>() / plane as f32)
            .collect();
        let mut logits = vec![0.0; batch * NUM_CLASSES];
        linear_rows(
            &pooled,
            &self.fc_weight,
            Some(&self.fc_bias),
            batch,
            HEAD_CHANNELS,
            NUM_CLASSES,
            &mut logits,
        );
        Ok(Some(Tensor::from_parts(logits, vec![batch, NUM_CLASSES])))
    }
}

/// Where `pmad fetch-weights` puts the backbones and where they are looked for (a model's
/// `--weights` flag overrides it for one file):
/// 1. `$PMAD_WEIGHTS_DIR` (or `$PMAD_WEIGHTS`) when set;
/// 2. the source checkout's `weights/` folder, when it exists — a clone, its tests and a
///    `cargo install --path .` binary built from it;
/// 3. else the user's cache, `$XDG_CACHE_HOME/pmad/weights` or `~/.cache/pmad/weights`, so a
///    binary whose build tree is gone (copied, or installed from a removed checkout) still
///    finds what `pmad fetch-weights` wrote.
pub fn default_weights_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    weights_dir_from(
        var("PMAD_WEIGHTS_DIR").or_else(|| var("PMAD_WEIGHTS")),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("weights"),
        var("XDG_CACHE_HOME"),
        var("HOME"),
    )
}

/// [`default_weights_dir`]'s choice from its inputs (the environment read by the caller).
fn weights_dir_from(
    explicit: Option<PathBuf>,
    checkout: &Path,
    xdg_cache: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    if let Some(d) = explicit {
        return d;
    }
    if checkout.is_dir() {
        return checkout.to_path_buf();
    }
    match (xdg_cache, home) {
        (Some(c), _) => c.join("pmad").join("weights"),
        (None, Some(h)) => h.join(".cache").join("pmad").join("weights"),
        // No home at all (a bare service account): the working directory's weights/.
        (None, None) => PathBuf::from("weights"),
    }
}

/// File name of the converted ImageNet Lite0 weights inside the weights folder.
pub const WEIGHTS_FILE: &str = "efficientnet_lite0.safetensors";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_dir_prefers_the_variable_then_the_checkout_then_the_user_cache() {
        let p = PathBuf::from;
        let here = Path::new(env!("CARGO_MANIFEST_DIR")); // exists
        let gone = Path::new("/nonexistent/pmad-checkout/weights");
        let (x, h) = (Some(p("/x")), Some(p("/home/u")));
        assert_eq!(
            weights_dir_from(Some(p("/w")), here, x.clone(), h.clone()),
            p("/w")
        );
        assert_eq!(weights_dir_from(None, here, x.clone(), h.clone()), here);
        assert_eq!(
            weights_dir_from(None, gone, x, h.clone()),
            p("/x/pmad/weights")
        );
        assert_eq!(
            weights_dir_from(None, gone, None, h),
            p("/home/u/.cache/pmad/weights")
        );
        assert_eq!(weights_dir_from(None, gone, None, None), p("weights"));
    }

    /// Lite0 with random weights (BN near identity), for tests of the pass's plumbing.
    fn random_lite0() -> EfficientNetLite {
        EfficientNetLite::from_source(|name, shape| {
            let n: usize = shape.iter().product();
            let mut r = crate::rng::Rng::new(n as u64 ^ name.len() as u64);
            let v = if name.ends_with("running_var") {
                vec![1.0; n]
            } else if name.ends_with("running_mean") || name.ends_with("bn0.bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| r.range(-0.3, 0.3)).collect()
            };
            Tensor::new(v, shape)
        })
        .unwrap()
    }

    #[test]
    fn inner_taps_are_the_blocks_expanded_activations() {
        let net = random_lite0();
        let mut r = crate::rng::Rng::new(5);
        let x = Tensor::new(
            (0..3 * 64 * 64).map(|_| r.range(-1.0, 1.0)).collect(),
            &[1, 3, 64, 64],
        )
        .unwrap();
        let names = ["blocks.3", "blocks.4.expand", "blocks.4.dw", "blocks.4"];
        let taps = net.forward_taps(&x, &names).unwrap();
        // Shapes as the spec reports them (stride relative to the 64 px input).
        for (name, t) in &taps {
            let (c, stride) = Backbone::Lite0.tap_channels_and_stride(name).unwrap();
            assert_eq!(t.shape(), &[1, c, 64 / stride, 64 / stride], "{name}");
        }
        assert_eq!(
            Backbone::Lite0.tap_channels_and_stride("blocks.4.dw"),
            Some((240, 8))
        );
        assert_eq!(
            Backbone::Lite0.tap_channels_and_stride("blocks.3.expand"),
            Some((144, 4))
        );
        // The math: blocks.4.dw = depthwise(blocks.4.expand); blocks.4 = project(dw) + blocks.3.
        let b = &net.blocks[4];
        let (h, w) = (taps[1].1.dim(2), taps[1].1.dim(3));
        let (dw, dh, dww) = b.depthwise.run(&taps[1].1.f32s(), 1, h, w);
        let want_dw = Tensor::new(dw.clone(), &[1, 240, dh, dww]).unwrap();
        assert_eq!(taps[2].1.max_abs_diff(&want_dw).unwrap(), 0.0);
        let (mut y, _, _) = b.project.run(&dw, 1, dh, dww);
        assert!(b.skip);
        y.iter_mut()
            .zip(taps[0].1.f32s().iter())
            .for_each(|(a, r)| *a += r);
        let want_out = Tensor::new(y, &[1, 40, dh, dww]).unwrap();
        assert_eq!(taps[3].1.max_abs_diff(&want_out).unwrap(), 0.0);
        // Block 0 has no expand conv (ratio 1); unknown inner names are errors.
        assert_eq!(
            Backbone::Lite0.tap_channels_and_stride("blocks.0.expand"),
            None
        );
        for bad in [
            "blocks.0.expand",
            "blocks.4.foo",
            "blocks.16.dw",
            "blocks.x.dw",
        ] {
            let e = net.forward_taps(&x, &[bad]).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    /// The derived block lists, against the shapes read from the released checkpoints.
    #[test]
    fn derived_blocks_match_the_checkpoints() {
        let outs = |b| block_specs(b).iter().map(|s| s.c_out).collect::<Vec<_>>();
        let stages = |b| {
            let mut r = [0usize; 7];
            block_specs(b).iter().for_each(|s| r[s.stage] += 1);
            r
        };
        assert_eq!(stages(Backbone::Lite0), [1, 2, 2, 3, 3, 4, 1]);
        assert_eq!(stages(Backbone::Lite1), [1, 3, 3, 4, 4, 5, 1]);
        assert_eq!(stages(Backbone::Lite2), [1, 3, 3, 4, 4, 5, 1]);
        let mut l2: Vec<usize> = outs(Backbone::Lite2);
        l2.dedup();
        assert_eq!(l2, [16, 24, 48, 88, 120, 208, 352]);
        let mut l1: Vec<usize> = outs(Backbone::Lite1);
        l1.dedup();
        assert_eq!(l1, [16, 24, 40, 80, 112, 192, 320]);
        assert_eq!(Backbone::Lite0.default_taps(), ["blocks.4", "blocks.10"]);
        assert_eq!(Backbone::Lite1.default_taps(), ["blocks.6", "blocks.14"]);
        assert_eq!(Backbone::Lite2.default_taps(), ["blocks.6", "blocks.14"]);
        assert_eq!(
            Backbone::Lite2.tap_channels_and_stride("blocks.6"),
            Some((48, 8))
        );
        assert_eq!(
            Backbone::Lite2.tap_channels_and_stride("blocks.14"),
            Some((120, 16))
        );
        assert_eq!(Backbone::Lite1.num_blocks(), 21);
    }
}
