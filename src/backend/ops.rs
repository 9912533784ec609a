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
//! returns it updated (so the CPU can work in place). Activations, masks and row indices stay
//! on the backend between ops: only what a caller puts in ([`InferOps::input`],
//! [`InferOps::indices`]) goes up, and only what it asks for ([`InferOps::to_host`]) comes
//! down. The third op set, [`ScoreOps`], is the scoring chain after the features
//! ([`crate::detector::resident`]).

use std::ops::Range;
use std::sync::Arc;

use crate::backend::DeviceBank;
use crate::detector::pipeline::ClassModel;
use crate::detector::scoring::{ImageScore, MapSpec};
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

/// One MBConv (inverted-residual) block: [expand 1x1 + act] -> depthwise kxk/s + act ->
/// project 1x1 (linear) [+ the block input when `skip`].
pub struct MbConv<W> {
    pub expand: Option<Conv<W>>,
    pub depthwise: Conv<W>,
    pub project: Conv<W>,
    pub skip: bool,
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

/// The per-row results of [`InferOps::entropy`], left on the backend: entropies and, when
/// targets were given, cross-entropies.
pub type RowEntropy<A> = (A, Option<A>);

/// The inference ops of one backend. Matrices are row-major; `rows` counts matrix rows.
pub trait InferOps {
    /// A model weight as this backend holds it.
    type Weight;
    /// An activation (an intermediate result) as this backend holds it.
    type Act;
    /// Row ids or per-row 0/1 flags (`u32`) as this backend holds them.
    type Idx;
    /// Images per forward pass: bounds activation memory.
    const CHUNK: usize;

    /// The values `range` of a parameter buffer, as a weight (shared on the CPU, uploaded
    /// on a device).
    fn weight(&self, param: &Arc<Vec<f32>>, range: Range<usize>) -> Result<Self::Weight>;

    /// Host values as an activation.
    fn input(&self, host: Vec<f32>) -> Result<Self::Act>;

    /// Host row ids or flags as an index buffer.
    fn indices(&self, host: Vec<u32>) -> Result<Self::Idx>;

    /// An activation's values on the host (a device copies them down).
    fn to_host(&self, x: &Self::Act) -> Result<Vec<f32>>;

    /// Hands back an activation the caller is done with: a backend may reuse its memory for
    /// a later op's output within the same forward pass (the CPU does, to skip zero-filling
    /// fresh outputs). Dropping it is always correct.
    fn recycle(&self, x: Self::Act) {
        drop(x);
    }

    /// Ends a forward pass: a backend frees what [`recycle`](Self::recycle) kept.
    fn release(&self) {}

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

    /// Row `r` of `x [rows, cols]` replaced by `token [cols]` where the flag `mask[r]` is set
    /// (`mask` holds one 0/1 flag per row).
    fn mask_rows(
        &self,
        x: Self::Act,
        mask: &Self::Idx,
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
    fn gather_rows(&self, x: &Self::Act, idx: &Self::Idx, cols: usize) -> Result<Self::Act>;

    /// Per row of `logits [rows, vocab]`: the entropy of its softmax and, with `targets`
    /// (`[rows]`, each below `vocab`), the cross-entropy `-log p[target]`.
    fn entropy(
        &self,
        logits: &Self::Act,
        rows: usize,
        vocab: usize,
        targets: Option<&Self::Idx>,
    ) -> Result<RowEntropy<Self::Act>>;
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

    /// One MBConv block of `x [batch, c_in, h, w]` (its inner maps not wanted). By default
    /// its three convs one after another (what a GPU runs); the CPU fuses them on bands of
    /// rows (`crate::ops::mbconv`), so the expanded map stays in cache.
    fn mbconv(
        &self,
        x: &Self::Act,
        b: &MbConv<Self::Weight>,
        batch: usize,
        hw: (usize, usize),
    ) -> Result<Self::Act> {
        mbconv_unfused(self, x, b, batch, hw)
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

/// An MBConv block as its three convs (the default [`ConvOps::mbconv`]).
pub fn mbconv_unfused<O: ConvOps + ?Sized>(
    ops: &O,
    x: &O::Act,
    b: &MbConv<O::Weight>,
    batch: usize,
    hw: (usize, usize),
) -> Result<O::Act> {
    let expanded = match &b.expand {
        Some(e) => Some(ops.conv2d(x, e, batch, hw, None)?),
        None => None,
    };
    let d = &b.depthwise;
    let dw = ops.conv2d(expanded.as_ref().unwrap_or(x), d, batch, hw, None)?;
    if let Some(e) = expanded {
        ops.recycle(e);
    }
    let dhw = (d.out_side(hw.0), d.out_side(hw.1));
    let y = ops.conv2d(&dw, &b.project, batch, dhw, b.skip.then_some(x))?;
    ops.recycle(dw);
    Ok(y)
}

/// Which stage of a scoring pass a non-finite value came from: the slots of
/// [`ScoreOps::record_nonfinite`]'s flags, in pipeline order.
pub const SCORE_STAGES: [&str; 4] = ["backbone", "search", "vit", "map"];

/// The ops of the scoring chain after the features (METHOD.md §3-7; issue 11 item 3), on the
/// buffers of [`InferOps`]: with them, [`crate::detector::resident`] scores a batch with
/// every intermediate result left on the backend; only image scores (and maps when asked
/// for) come back. Per-image maps are `[images, side²]`.
pub trait ScoreOps: ConvOps {
    /// The distance `‖f - p*‖` of each feature row `feats [rows, dim]` to its nearest
    /// prototype `p*` in `class`'s bank (exact; the CPU searches the bank's index, a device
    /// scans its copy of the bank).
    fn nearest_distance(
        &self,
        class: &ClassModel,
        feats: &Self::Act,
        rows: usize,
        dim: usize,
    ) -> Result<Self::Act>;

    /// Each row of `rows [n, dim]`'s nearest row of `codes [k, dim]` (a codebook; a device
    /// keeps its copy in `on_device`).
    fn assign(
        &self,
        codes: &[f32],
        on_device: &DeviceBank,
        rows: &Self::Act,
        n: usize,
        dim: usize,
    ) -> Result<Self::Idx>;

    /// The proposal mask (METHOD.md §5): per image, the `grid x grid` abnormality brought to
    /// the ViT grid by window max, then flags on its `k = round(ratio · vgrid²)` highest
    /// cells (ties to the lower index). Returns the flags `[images, vgrid²]` and `k`.
    fn proposal_mask(
        &self,
        abnormality: &Self::Act,
        images: usize,
        grid: usize,
        vgrid: usize,
        ratio: f32,
    ) -> Result<(Self::Idx, usize)>;

    /// The row ids `b·n + i` (ascending `i`) of the `k` set flags of each image of
    /// `mask [images, n]`.
    fn masked_rows(&self, mask: &Self::Idx, images: usize, n: usize, k: usize)
    -> Result<Self::Idx>;

    /// Feature rows `[images, grid², dim]` pooled to the ViT grid `[images, vgrid², dim]`
    /// (the mean of each cell).
    fn pool_cells(
        &self,
        feats: &Self::Act,
        images: usize,
        grid: usize,
        vgrid: usize,
        dim: usize,
    ) -> Result<Self::Act>;

    /// `y [len]`: 0, but `y[idx[r]] = v[r]`.
    fn scatter_rows(&self, v: &Self::Act, idx: &Self::Idx, len: usize) -> Result<Self::Act>;

    /// Per image, `e [vgrid²]` brought to the feature grid (nearest) and multiplied by the
    /// abnormality `a [grid²]` when given (full PMAD, METHOD.md §7).
    fn upsample_product(
        &self,
        e: &Self::Act,
        a: Option<&Self::Act>,
        images: usize,
        vgrid: usize,
        grid: usize,
    ) -> Result<Self::Act>;

    /// Per image, the patch scores `[grid²]` bilinearly upsampled to `spec.size²` and blurred
    /// ([`crate::detector::scoring::patch_scores_to_map`]): `[images, spec.size²]`.
    fn maps(
        &self,
        patches: &Self::Act,
        images: usize,
        grid: usize,
        spec: &MapSpec,
    ) -> Result<Self::Act>;

    /// Per map of `maps [images, n]`, its image score ([`ImageScore::of`]).
    fn image_scores(
        &self,
        maps: &Self::Act,
        images: usize,
        n: usize,
        score: ImageScore,
    ) -> Result<Self::Act>;

    /// `images · SCORE_STAGES.len()` zero flags for [`record_nonfinite`](Self::record_nonfinite).
    fn nonfinite_flags(&self, images: usize) -> Result<Self::Act> {
        self.zeros(images * SCORE_STAGES.len())
    }

    /// Records a non-finite value of each image of `x [images, per]` into its `slot` flag
    /// (`flags [images, SCORE_STAGES.len()]`, 0 = all finite).
    fn record_nonfinite(
        &self,
        x: &Self::Act,
        per: usize,
        flags: &mut Self::Act,
        slot: usize,
    ) -> Result<()>;
}
