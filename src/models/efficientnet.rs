//! EfficientNet-Lite0 (the TF `efficientnet/lite` network, width = depth = 1.0), inference only,
//! with its intermediate maps exposed as taps (`stem`, `blocks.N`) for feature extraction.
//!
//! Architecture: stem conv3x3/2 (3->32) + BN + ReLU6; 16 MBConv blocks without squeeze-excite,
//! ReLU6 throughout; head conv1x1 (320->1280) + BN + ReLU6, global mean, FC 1280->1000.
//! Each MBConv: [expand 1x1 + BN + ReLU6] -> depthwise kxk/s + BN + ReLU6 -> project 1x1 + BN
//! (linear bottleneck, no activation) -> identity skip when stride 1 and in == out.
//! Padding is TF "SAME" (asymmetric for stride 2), BatchNorm eps is 1e-3. BN is folded into the
//! convs at load time, so each conv is one pass with a fused bias + activation.
//! Weight names follow `efficientnet_pytorch` (`_conv_stem.weight`, `_blocks.3._bn1.running_var`).

use crate::error::{Error, Result};
use crate::ops::conv::{Activation, ConvShape, Padding, conv2d_into, fold_batchnorm};
use crate::ops::matmul::linear_rows;
use crate::tensor::Tensor;
use std::path::Path;

const BN_EPS: f32 = 1e-3;

/// One stage: (kernel, stride, expand ratio, in channels, out channels, repeats).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
];

pub const NUM_BLOCKS: usize = 16;
pub const NUM_CLASSES: usize = 1000;

/// Output channels of each tap, and its stride relative to the input.
pub fn tap_channels_and_stride(tap: &str) -> Option<(usize, usize)> {
    if tap == "stem" {
        return Some((32, 2));
    }
    let n: usize = tap.strip_prefix("blocks.")?.parse().ok()?;
    let spec = block_specs().get(n).copied()?;
    let stride: usize = 2 * block_specs()[..=n]
        .iter()
        .map(|b| b.stride)
        .product::<usize>();
    Some((spec.c_out, stride))
}

#[derive(Clone, Copy, Debug)]
struct BlockSpec {
    kernel: usize,
    stride: usize,
    expand: usize,
    c_in: usize,
    c_out: usize,
}

fn block_specs() -> Vec<BlockSpec> {
    let mut v = Vec::new();
    for (k, s, e, cin, cout, r) in STAGES {
        for i in 0..r {
            v.push(BlockSpec {
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
/// (Fields crate-visible: the CUDA backend uploads them.)
pub(crate) struct ConvBn {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) groups: usize,
    pub(crate) act: Activation,
}

impl ConvBn {
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
        let mut y = vec![0.0; batch * self.c_out * s.out_h() * s.out_w()];
        conv2d_into(x, &self.weight, Some(&self.bias), &s, self.act, &mut y);
        (y, s.out_h(), s.out_w())
    }
}

pub(crate) struct MbConv {
    pub(crate) expand: Option<ConvBn>,
    pub(crate) depthwise: ConvBn,
    pub(crate) project: ConvBn,
    pub(crate) skip: bool,
}

/// The pretrained network, BN folded, ready for inference.
pub struct EfficientNetLite0 {
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

impl EfficientNetLite0 {
    /// Loads `efficientnet_lite0.safetensors` (as written by `pmad fetch-weights`).
    pub fn load(path: &Path) -> Result<EfficientNetLite0> {
        let st = crate::weights::SafeTensors::open(path)?;
        Self::from_source(|name, shape| st.tensor_f32_checked(name, shape))
    }

    /// Builds the network from any weight source: `get(name, expected_shape)` must return that
    /// tensor or an error naming it.
    pub fn from_source(
        get: impl Fn(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<EfficientNetLite0> {
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
                weight,
                bias,
                c_in,
                c_out,
                kernel: k,
                stride,
                groups,
                act,
            })
        };
        let stem = conv_bn("_conv_stem", "_bn0", 3, 32, 3, 2, 1, Activation::Relu6)?;
        let mut blocks = Vec::with_capacity(NUM_BLOCKS);
        for (i, b) in block_specs().into_iter().enumerate() {
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
        let head = conv_bn("_conv_head", "_bn1", 320, 1280, 1, 1, 1, Activation::Relu6)?;
        let fc_weight = get("_fc.weight", &[NUM_CLASSES, 1280])?.into_f32_vec();
        let fc_bias = get("_fc.bias", &[NUM_CLASSES])?.into_f32_vec();
        Ok(EfficientNetLite0 {
            stem,
            blocks,
            head,
            fc_weight,
            fc_bias,
        })
    }

    fn check_input(x: &Tensor) -> Result<()> {
        if x.rank() != 4 || x.dim(1) != 3 {
            return Err(Error::shape(format!(
                "EfficientNet-Lite0 expects an image batch [B, 3, H, W], got {:?}{}",
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
    /// (`stem`, `blocks.0` .. `blocks.15`), each `[B, C, h, w]`.
    pub fn forward_taps(&self, x: &Tensor, taps: &[&str]) -> Result<Taps> {
        Self::check_input(x)?;
        let mut depth = None::<usize>; // deepest block needed
        for t in taps {
            match *t {
                "stem" => {}
                _ => match t
                    .strip_prefix("blocks.")
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    Some(n) if n < NUM_BLOCKS => depth = Some(depth.map_or(n, |d: usize| d.max(n))),
                    _ => {
                        return Err(Error::invalid(format!(
                            "unknown tap '{t}' (use stem or blocks.0..blocks.15)"
                        )));
                    }
                },
            }
        }
        let mut out: Vec<Option<Tensor>> = vec![None; taps.len()];
        // Only the stem asked for: still stop as early as the pass allows.
        let depth = depth.or(Some(0));
        self.run(x, depth, &mut |name, v, shape| {
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
        self.run(x, None, &mut |_, _, _| {})
            .map(|l| l.expect("full pass yields logits"))
    }

    /// Same as [`forward`](Self::forward) but also returns the requested taps (one pass).
    pub fn forward_with_taps(&self, x: &Tensor, taps: &[&str]) -> Result<(Tensor, Taps)> {
        Self::check_input(x)?;
        let mut got: Taps = Vec::new();
        let logits = self
            .run(x, None, &mut |name, v, shape| {
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
    /// calls `tap(name, values, [B, C, h, w])` after the stem and after every block.
    fn run(&self, x: &Tensor, stop_after: Option<usize>, tap: TapFn<'_>) -> Result<Option<Tensor>> {
        let batch = x.dim(0);
        let (mut cur, mut h, mut w) = self.stem.run(&x.f32s(), batch, x.dim(2), x.dim(3));
        tap("stem", &cur, [batch, 32, h, w]);
        for (i, b) in self.blocks.iter().enumerate() {
            let expanded;
            let (input, eh, ew) = match &b.expand {
                Some(e) => {
                    let (v, eh, ew) = e.run(&cur, batch, h, w);
                    expanded = v;
                    (&expanded[..], eh, ew)
                }
                None => (&cur[..], h, w),
            };
            let (dw, dh, dww) = b.depthwise.run(input, batch, eh, ew);
            let (mut y, ph, pw) = b.project.run(&dw, batch, dh, dww);
            if b.skip {
                y.iter_mut().zip(&cur).for_each(|(a, r)| *a += r);
            }
            (cur, h, w) = (y, ph, pw);
            tap(&format!("blocks.{i}"), &cur, [batch, b.project.c_out, h, w]);
            if stop_after == Some(i) {
                return Ok(None);
            }
        }
        let (feat, hh, hw) = self.head.run(&cur, batch, h, w);
        // Global mean over the 1280 head maps, then the FC layer.
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
            1280,
            NUM_CLASSES,
            &mut logits,
        );
        Ok(Some(Tensor::from_parts(logits, vec![batch, NUM_CLASSES])))
    }
}

/// Where `pmad fetch-weights` puts the backbone and where it is looked for: `$PMAD_WEIGHTS_DIR`
/// when set, else the crate's `weights/` folder.
pub fn default_weights_dir() -> std::path::PathBuf {
    match std::env::var_os("PMAD_WEIGHTS_DIR") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("weights"),
    }
}

/// File name of the converted ImageNet weights inside the weights folder.
pub const WEIGHTS_FILE: &str = "efficientnet_lite0.safetensors";
