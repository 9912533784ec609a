//! The op set that model inference is written against, once, for both backends.
//!
//! [`InferOps`] is a trait with associated buffer types, not an enum-dispatched buffer: a
//! model forward such as [`crate::recon::vit_infer::InferVit`] is generic over it, so each
//! backend's instance is monomorphised (the CPU path pays no dispatch, no `Option` buffer
//! and no "wrong backend" error per op), and the compiler checks that a CPU buffer never
//! reaches a CUDA op. Implementations: [`CpuOps`](super::CpuOps) (the `src/ops` kernels on
//! host vectors; parameters are shared, not copied) and, with the `cuda` feature, `CudaOps`
//! (the `src/cuda` launchers on device buffers; parameters are uploaded once).
//!
//! The convolutional backbone's ops are a second trait beside it, [`ConvOps`] (a sub-trait:
//! same buffer types), so the ViT's bound stays the small set it uses and a backend can run
//! the ViT before it runs convolutions. [`crate::models::efficientnet_infer`] is written on it.
//! A convolution is one op with its epilogue (bias, ReLU6, skip) fused, not four: that is how
//! both backends already compute it (the CPU conv writes bias + activation in its GEMM's
//! output pass, the GPU in one elementwise kernel after cuBLAS), and split ops would cost the
//! CPU extra passes over every map.
//!
//! Every op takes its sizes explicitly and returns a fresh activation, or consumes one and
//! returns it updated (so the CPU can work in place). Activations stay on the backend
//! between ops: only inputs, masks and row indices go in, and per-row entropies come out.

use std::ops::Range;
use std::sync::Arc;

use crate::error::Result;
use crate::ops::attention::AttnShape;
use crate::ops::conv::Activation;

/// A linear layer `y = x · wᵀ + b` with `w [out, inp]` (torch's layout) and `b [out]`.
pub struct Linear<W> {
    pub w: W,
    pub b: W,
    pub inp: usize,
    pub out: usize,
}

/// A layer norm's scale `gamma` and shift `beta` (`[cols]` each).
pub struct Norm<W> {
    pub gamma: W,
    pub beta: W,
}

/// A 2-d convolution `[c_out, c_in / groups, k, k]` with TF-"same" padding
/// ([`crate::ops::conv::Padding::tf_same`]): dense (`groups == 1`; `k == 1`, `stride == 1` is
/// a pointwise GEMM) or depthwise (`groups == c_in == c_out`), then `+ bias` per output
/// channel and `act`.
pub struct Conv<W> {
    pub weight: W,
    pub bias: Option<W>,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub act: Activation,
}

impl<W> Conv<W> {
    /// Whether this is a depthwise conv (one filter per channel).
    pub fn depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c_in && self.groups == self.c_out
    }

    /// Output side of an input side `n` (TF-"same": `⌈n / stride⌉`).
    pub fn out_side(&self, n: usize) -> usize {
        n.div_ceil(self.stride)
    }
}

/// The per-entropy-row results of [`InferOps::entropy`]: entropies and, when targets were
/// given, cross-entropies.
pub type RowEntropy = (Vec<f32>, Option<Vec<f32>>);

/// The inference ops of one backend. Matrices are row-major; `rows` counts matrix rows.
pub trait InferOps {
    /// A model weight as this backend holds it.
    type Weight;
    /// An activation (an intermediate result) as this backend holds it.
    type Act;
    /// Images per forward pass: bounds activation memory.
    const CHUNK: usize;

    /// The values `range` of a parameter buffer, as a weight (shared on the CPU, uploaded
    /// on a device).
    fn weight(&self, param: &Arc<Vec<f32>>, range: Range<usize>) -> Result<Self::Weight>;

    /// Host values as an activation.
    fn input(&self, host: Vec<f32>) -> Result<Self::Act>;

    /// `x [rows, l.inp] · l.wᵀ + l.b (+ residual [rows, l.out])`.
    fn linear(
        &self,
        x: &Self::Act,
        l: &Linear<Self::Weight>,
        residual: Option<&Self::Act>,
        rows: usize,
    ) -> Result<Self::Act>;

    /// Layer norm of every row of `x [rows, cols]` (biased variance, `eps` inside the root).
    fn layernorm(
        &self,
        x: &Self::Act,
        n: &Norm<Self::Weight>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Self::Act>;

    /// Exact GELU `x · Φ(x)`, elementwise.
    fn gelu(&self, x: Self::Act) -> Result<Self::Act>;

    /// `x[r, c] + bias[c]` for `x [rows, cols]`.
    fn add_bias(
        &self,
        x: Self::Act,
        bias: &Self::Weight,
        rows: usize,
        cols: usize,
    ) -> Result<Self::Act>;

    /// Row `r` of `x [mask.len(), cols]` replaced by `token [cols]` where `mask[r]`.
    fn mask_rows(
        &self,
        x: Self::Act,
        mask: &[bool],
        token: &Self::Weight,
        cols: usize,
    ) -> Result<Self::Act>;

    /// Multi-head softmax attention of `q, k, v [B, N, H·D]` (scale `1/√D`) -> `[B, N, H·D]`.
    fn attention(
        &self,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        s: AttnShape,
    ) -> Result<Self::Act>;

    /// `y [idx.len(), cols]`, `y[i] = x[idx[i]]` (every index a row of `x`).
    fn gather_rows(&self, x: &Self::Act, idx: &[usize], cols: usize) -> Result<Self::Act>;

    /// Per row of `logits [rows, vocab]`, on the host: the entropy of its softmax and, with
    /// `targets` (`[rows]`, each below `vocab`), the cross-entropy `-log p[target]`.
    fn entropy(
        &self,
        logits: &Self::Act,
        rows: usize,
        vocab: usize,
        targets: Option<&[u32]>,
    ) -> Result<RowEntropy>;
}

/// The ops of a convolutional backbone and of the patch-feature aggregation, on the buffers of
/// [`InferOps`]. Maps are NCHW (`[batch, channels, h, w]`, or `planes` of `h x w`).
pub trait ConvOps: InferOps {
    /// `len` zeros, as an activation.
    fn zeros(&self, len: usize) -> Result<Self::Act>;

    /// `act(conv(x) + bias) (+ residual)` of `x [batch, c.c_in, h, w]` ->
    /// `[batch, c.c_out, ⌈h / stride⌉, ⌈w / stride⌉]`; `residual` has the output's shape and
    /// is added after the activation (the MBConv skip, after a linear project conv).
    fn conv2d(
        &self,
        x: &Self::Act,
        c: &Conv<Self::Weight>,
        batch: usize,
        hw: (usize, usize),
        residual: Option<&Self::Act>,
    ) -> Result<Self::Act>;

    /// [`conv2d`](Self::conv2d) of host values `x` (a network's input), without a residual:
    /// the CPU reads them where they are, a device uploads them first.
    fn conv2d_host(
        &self,
        x: &[f32],
        c: &Conv<Self::Weight>,
        batch: usize,
        hw: (usize, usize),
    ) -> Result<Self::Act> {
        self.conv2d(&self.input(x.to_vec())?, c, batch, hw, None)
    }

    /// Each of `planes` planes `from` (h, w) brought onto a `to` (h, w) grid: resized
    /// bilinearly (`align_corners=False`, edge replication, as `crate::ops::resize`; skipped
    /// when the sizes agree), then averaged over a `pool x pool` window (odd; stride 1, cells
    /// outside the plane not counted; `1`: none). `None` when there is nothing to do (the
    /// sizes agree and `pool == 1`: `x` is the result). One op, so the CPU does both per
    /// plane in one pass.
    fn resample(
        &self,
        x: &Self::Act,
        planes: usize,
        from: (usize, usize),
        to: (usize, usize),
        pool: usize,
    ) -> Result<Option<Self::Act>>;

    /// Scatters `x [batch, channels, plane]` channels-last into columns
    /// `col_offset..col_offset + channels` of `rows [batch · plane, row_width]`.
    #[allow(clippy::too_many_arguments)]
    fn nchw_to_rows(
        &self,
        x: &Self::Act,
        rows: &mut Self::Act,
        batch: usize,
        channels: usize,
        plane: usize,
        row_width: usize,
        col_offset: usize,
    ) -> Result<()>;
}
