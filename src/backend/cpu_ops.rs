//! [`InferOps`] on the CPU: the `src/ops` kernels (the reference) on host vectors. Each op
//! computes exactly what the autograd tape's op of the same name computes in its forward
//! pass (same kernels, same order of additions), so a model written on these ops matches its
//! tape forward to the bit, or up to GEMM blocking where a layer is split differently.

use std::ops::{Deref, Range};
use std::sync::Arc;

use rayon::prelude::*;

use super::ops::{Conv, ConvOps, InferOps, Linear, Norm, RowEntropy};
use crate::error::{Error, Result};
use crate::ops::attention::{AttnShape, attention_forward};
use crate::ops::conv::{ConvShape, Padding, conv2d_into};
use crate::ops::elementwise::gelu_inplace;
use crate::ops::layernorm::layernorm_rows;
use crate::ops::matmul::linear_rows;
use crate::ops::pool::avg_pool_plane;
use crate::ops::resize::bilinear_plane;
use crate::ops::softmax::{entropy_rows, logsumexp};

/// The CPU op set (no state: the kernels parallelise over rayon's pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuOps;

/// A weight on the CPU: a range of a parameter's buffer, shared with its store (no copy).
pub struct CpuWeight {
    buf: Arc<Vec<f32>>,
    range: Range<usize>,
}

impl Deref for CpuWeight {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buf[self.range.clone()]
    }
}

impl InferOps for CpuOps {
    type Weight = CpuWeight;
    type Act = Vec<f32>;
    const CHUNK: usize = 32;

    fn weight(&self, param: &Arc<Vec<f32>>, range: Range<usize>) -> Result<CpuWeight> {
        if range.start > range.end || range.end > param.len() {
            return Err(Error::invalid(format!(
                "weight {range:?} outside its parameter of {} values",
                param.len()
            )));
        }
        Ok(CpuWeight {
            buf: param.clone(),
            range,
        })
    }

    fn input(&self, host: Vec<f32>) -> Result<Vec<f32>> {
        Ok(host)
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        l: &Linear<CpuWeight>,
        residual: Option<&Vec<f32>>,
        rows: usize,
    ) -> Result<Vec<f32>> {
        let mut y = vec![0.0; rows * l.out];
        linear_rows(x, &l.w, Some(&l.b), rows, l.inp, l.out, &mut y);
        // The tape adds the residual after the layer: `r + (x·wᵀ + b)`, same rounding.
        if let Some(r) = residual {
            y.iter_mut().zip(r).for_each(|(y, &r)| *y += r);
        }
        Ok(y)
    }

    fn layernorm(
        &self,
        x: &Vec<f32>,
        n: &Norm<CpuWeight>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Vec<f32>> {
        let mut y = vec![0.0; rows * cols];
        layernorm_rows(x, &n.gamma, &n.beta, cols, eps, &mut y, None);
        Ok(y)
    }

    fn gelu(&self, mut x: Vec<f32>) -> Result<Vec<f32>> {
        gelu_inplace(&mut x);
        Ok(x)
    }

    fn add_bias(
        &self,
        mut x: Vec<f32>,
        bias: &CpuWeight,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        for row in x[..rows * cols].chunks_mut(cols) {
            row.iter_mut().zip(bias.iter()).for_each(|(x, &b)| *x += b);
        }
        Ok(x)
    }

    fn mask_rows(
        &self,
        mut x: Vec<f32>,
        mask: &[bool],
        token: &CpuWeight,
        cols: usize,
    ) -> Result<Vec<f32>> {
        for (row, _) in x.chunks_mut(cols).zip(mask).filter(|(_, m)| **m) {
            row.copy_from_slice(token);
        }
        Ok(x)
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        s: AttnShape,
    ) -> Result<Vec<f32>> {
        let mut o = vec![0.0; q.len()];
        // The log-sum-exp per query is for a backward pass; inference drops it.
        let mut lse = vec![0.0; s.batch * s.heads * s.tokens];
        attention_forward(q, k, v, s, &mut o, &mut lse);
        Ok(o)
    }

    fn gather_rows(&self, x: &Vec<f32>, idx: &[usize], cols: usize) -> Result<Vec<f32>> {
        let mut y = Vec::with_capacity(idx.len() * cols);
        for &i in idx {
            y.extend_from_slice(&x[i * cols..(i + 1) * cols]);
        }
        Ok(y)
    }

    fn entropy(
        &self,
        logits: &Vec<f32>,
        rows: usize,
        vocab: usize,
        targets: Option<&[u32]>,
    ) -> Result<RowEntropy> {
        let logits = &logits[..rows * vocab];
        let cross = targets.map(|t| {
            logits
                .par_chunks(vocab)
                .zip(t.par_iter())
                .map(|(row, &k)| logsumexp(row) - row[k as usize])
                .collect()
        });
        Ok((entropy_rows(logits, vocab), cross))
    }
}

/// [`ConvOps::conv2d`] on a slice: [`conv2d_into`] into a fresh output, then the residual.
fn conv_slice(
    x: &[f32],
    c: &Conv<CpuWeight>,
    batch: usize,
    (h, w): (usize, usize),
    residual: Option<&Vec<f32>>,
) -> Result<Vec<f32>> {
    let s = ConvShape {
        batch,
        c_in: c.c_in,
        h,
        w,
        c_out: c.c_out,
        kh: c.kernel,
        kw: c.kernel,
        stride: c.stride,
        groups: c.groups,
        pad: Padding::tf_same(h, w, c.kernel, c.stride),
    };
    let n_in = batch * c.c_in * h * w;
    let n_out = batch * c.c_out * s.out_h() * s.out_w();
    if x.len() != n_in || residual.is_some_and(|r| r.len() != n_out) {
        return Err(Error::shape(format!(
            "conv2d: input of {} values for [{batch}, {}, {h}, {w}] (or a residual not of \
             {n_out})",
            x.len(),
            c.c_in
        )));
    }
    let mut y = vec![0.0; n_out];
    conv2d_into(x, &c.weight, c.bias.as_deref(), &s, c.act, &mut y);
    // The skip after the (linear) project conv: `y + r`, as the tape adds it.
    if let Some(r) = residual {
        y.iter_mut().zip(r).for_each(|(a, r)| *a += r);
    }
    Ok(y)
}

/// The backbone's ops: the conv is [`conv2d_into`] (the blocked GEMM, im2col for the strided
/// stem, `src/ops/depthwise.rs` for depthwise convs; bias and ReLU6 in its output pass), the
/// aggregation the per-plane kernels of `src/ops/resize.rs` and `src/ops/pool.rs` (resize and
/// pool of one plane in one task), over rayon's pool.
impl ConvOps for CpuOps {
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn conv2d(
        &self,
        x: &Vec<f32>,
        c: &Conv<CpuWeight>,
        batch: usize,
        hw: (usize, usize),
        residual: Option<&Vec<f32>>,
    ) -> Result<Vec<f32>> {
        conv_slice(x, c, batch, hw, residual)
    }

    fn conv2d_host(
        &self,
        x: &[f32],
        c: &Conv<CpuWeight>,
        batch: usize,
        hw: (usize, usize),
    ) -> Result<Vec<f32>> {
        // No copy of the input.
        conv_slice(x, c, batch, hw, None)
    }

    fn resample(
        &self,
        x: &Vec<f32>,
        planes: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        pool: usize,
    ) -> Result<Option<Vec<f32>>> {
        if x.len() != planes * h * w || pool.is_multiple_of(2) {
            return Err(Error::shape(format!(
                "resample: {} values for {planes} planes of {h}x{w} (pool {pool})",
                x.len()
            )));
        }
        let same = (h, w) == (oh, ow);
        if same && pool == 1 {
            return Ok(None);
        }
        let mut y = vec![0.0; planes * oh * ow];
        if oh * ow == 0 || h * w == 0 {
            return Ok(Some(y));
        }
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(out, src)| match (same, pool > 1) {
                (true, false) => out.copy_from_slice(src),
                (true, true) => avg_pool_plane(src, h, w, pool, out),
                (false, false) => bilinear_plane(src, h, w, oh, ow, out),
                (false, true) => {
                    let mut resized = vec![0.0; oh * ow];
                    bilinear_plane(src, h, w, oh, ow, &mut resized);
                    avg_pool_plane(&resized, oh, ow, pool, out);
                }
            });
        Ok(Some(y))
    }

    fn nchw_to_rows(
        &self,
        x: &Vec<f32>,
        rows: &mut Vec<f32>,
        batch: usize,
        channels: usize,
        plane: usize,
        row_width: usize,
        col_offset: usize,
    ) -> Result<()> {
        if col_offset + channels > row_width || rows.len() < batch * plane * row_width {
            return Err(Error::shape(format!(
                "nchw_to_rows: columns {col_offset}..{} of rows {row_width} wide",
                col_offset + channels
            )));
        }
        if plane * channels == 0 {
            return Ok(());
        }
        rows.par_chunks_mut(plane * row_width)
            .zip(x.par_chunks(channels * plane))
            .for_each(|(o, img)| {
                for (ch, src) in img.chunks(plane).enumerate() {
                    for (p, &v) in src.iter().enumerate() {
                        o[p * row_width + col_offset + ch] = v;
                    }
                }
            });
        Ok(())
    }
}
