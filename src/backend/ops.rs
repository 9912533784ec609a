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
//! Every op takes its sizes explicitly and returns a fresh activation, or consumes one and
//! returns it updated (so the CPU can work in place). Activations stay on the backend
//! between ops: only inputs, masks and row indices go in, and per-row entropies come out.

use std::ops::Range;
use std::sync::Arc;

use crate::error::Result;
use crate::ops::attention::AttnShape;

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
