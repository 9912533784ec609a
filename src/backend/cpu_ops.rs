//! [`InferOps`] on the CPU: the `src/ops` kernels (the reference) on host vectors. Each op
//! computes exactly what the autograd tape's op of the same name computes in its forward
//! pass (same kernels, same order of additions), so a model written on these ops matches its
//! tape forward to the bit, or up to GEMM blocking where a layer is split differently.

use std::ops::{Deref, Range};
use std::sync::Arc;

use rayon::prelude::*;

use super::DeviceBank;
use super::ops::{
    Conv, ConvOps, InferOps, Linear, MbConv, Norm, RowEntropy, SCORE_STAGES, ScoreOps,
    mbconv_unfused,
};
use crate::detector::pipeline::ClassModel;
use crate::detector::scoring::{ImageScore, MapSpec, patch_map_into};
use crate::detector::stage2::vit_to_feature_grid;
use crate::error::{Error, Result};
use crate::ops::attention::{AttnShape, attention_forward};
use crate::ops::conv::{ConvShape, Padding, conv2d_into};
use crate::ops::elementwise::gelu_inplace;
use crate::ops::layernorm::layernorm_rows;
use crate::ops::matmul::linear_rows;
use crate::ops::mbconv::{Layer, MbConvShape, mbconv};
use crate::ops::nn_search::{nearest_rows, row_sq_norms};
use crate::ops::pool::avg_pool_plane;
use crate::ops::resize::bilinear_plane;
use crate::ops::softmax::{entropy_rows, logsumexp};
use crate::ops::spare;
use crate::recon::masking::{downsample_max, proposal_mask};
use crate::recon::tokenizer::pool_to_vit_grid;

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
    type Idx = Vec<u32>;
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

    fn indices(&self, host: Vec<u32>) -> Result<Vec<u32>> {
        Ok(host)
    }

    fn to_host(&self, x: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(x.clone())
    }

    fn recycle(&self, x: Vec<f32>) {
        spare::give(x);
    }

    fn release(&self) {
        spare::clear();
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
        mask: &Vec<u32>,
        token: &CpuWeight,
        cols: usize,
    ) -> Result<Vec<f32>> {
        if x.len() != mask.len() * cols {
            return Err(Error::shape(format!(
                "mask_rows: {} flags for {} values of rows {cols} wide",
                mask.len(),
                x.len()
            )));
        }
        for (row, _) in x.chunks_mut(cols).zip(mask).filter(|(_, m)| **m != 0) {
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

    fn gather_rows(&self, x: &Vec<f32>, idx: &Vec<u32>, cols: usize) -> Result<Vec<f32>> {
        let mut y = Vec::with_capacity(idx.len() * cols);
        for &i in idx {
            let row = x
                .get(i as usize * cols..(i as usize + 1) * cols)
                .ok_or_else(|| {
                    Error::shape(format!(
                        "gather_rows: row {i} outside {} rows",
                        x.len() / cols.max(1)
                    ))
                })?;
            y.extend_from_slice(row);
        }
        Ok(y)
    }

    fn entropy(
        &self,
        logits: &Vec<f32>,
        rows: usize,
        vocab: usize,
        targets: Option<&Vec<u32>>,
    ) -> Result<RowEntropy<Vec<f32>>> {
        let logits = &logits[..rows * vocab];
        if let Some(t) = targets
            && (t.len() != rows || t.iter().any(|&k| k as usize >= vocab))
        {
            return Err(Error::invalid(format!(
                "entropy: {} targets for {rows} rows, or one outside the vocabulary of {vocab}",
                t.len()
            )));
        }
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
    // `conv2d_into` writes every output value (GEMMs with beta = 0, the depthwise kernel on
    // every plane): a spare activation's stale values need no zeroing (`ops::spare`).
    let mut y = spare::take(n_out);
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

    /// Fused on bands of rows (`crate::ops::mbconv`) when the block has the usual shape
    /// (expand 1x1, depthwise, project 1x1, every layer biased); the three convs otherwise.
    fn mbconv(
        &self,
        x: &Vec<f32>,
        b: &MbConv<CpuWeight>,
        batch: usize,
        (h, w): (usize, usize),
    ) -> Result<Vec<f32>> {
        let (d, p) = (&b.depthwise, &b.project);
        let fusable = |e: &&Conv<CpuWeight>| {
            e.kernel == 1
                && e.stride == 1
                && e.groups == 1
                && d.depthwise()
                && d.c_in == e.c_out
                && d.kernel >= d.stride
                && p.kernel == 1
                && p.stride == 1
                && p.groups == 1
                && p.c_in == d.c_out
                && (!b.skip || (d.stride == 1 && p.c_out == e.c_in))
        };
        let e = b.expand.as_ref().filter(fusable);
        let (Some(e), Some(eb), Some(db), Some(pb)) =
            (e, e.and_then(|e| e.bias.as_ref()), &d.bias, &p.bias)
        else {
            return mbconv_unfused(self, x, b, batch, (h, w));
        };
        if x.len() != batch * e.c_in * h * w {
            return Err(Error::shape(format!(
                "mbconv: input of {} values for [{batch}, {}, {h}, {w}]",
                x.len(),
                e.c_in
            )));
        }
        let channels = [e.c_in, e.c_out, p.c_out];
        let s = MbConvShape::new(batch, (h, w), channels, (d.kernel, d.stride));
        fn layer_of<'a>(c: &'a Conv<CpuWeight>, bias: &'a CpuWeight) -> Layer<'a> {
            Layer {
                weight: &c.weight,
                bias,
                act: c.act,
            }
        }
        Ok(mbconv(
            x,
            [layer_of(e, eb), layer_of(d, db), layer_of(p, pb)],
            b.skip,
            &s,
        ))
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
        if oh * ow == 0 || h * w == 0 {
            return Ok(Some(vec![0.0; planes * oh * ow]));
        }
        // Every plane below is written whole (copy, pool or resize).
        let mut y = spare::take(planes * oh * ow);
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

/// The scoring chain on the CPU: each op is the function the staged CPU path
/// (`detector/patch_scores.rs`, `detector/stage2.rs`) calls, image by image, so
/// the resident pipeline on these ops scores exactly as that path does.
impl ScoreOps for CpuOps {
    fn nearest_distance(
        &self,
        class: &ClassModel,
        feats: &Vec<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<Vec<f32>> {
        if feats.len() != rows * dim {
            return Err(Error::shape(format!(
                "nearest_distance: {} values for {rows} rows of {dim}",
                feats.len()
            )));
        }
        // The index's pruning bounds assume finite queries: a NaN never reaches it.
        if let Some(i) = crate::weights::first_non_finite(feats) {
            return Err(Error::NonFinite {
                class: class.info.name.clone(),
                image: i / dim,
                stage: "backbone",
                value: feats[i],
            });
        }
        let nn = class.search_index(dim).nearest(feats);
        Ok(nn.dist2.iter().map(|d| d.sqrt()).collect())
    }

    fn assign(
        &self,
        codes: &[f32],
        _on_device: &DeviceBank,
        rows: &Vec<f32>,
        n: usize,
        dim: usize,
    ) -> Result<Vec<u32>> {
        if rows.len() != n * dim || dim == 0 || !codes.len().is_multiple_of(dim) {
            return Err(Error::shape(format!(
                "assign: {} values for {n} rows of {dim} (codebook of {} values)",
                rows.len(),
                codes.len()
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        // As `Codebook::assign`.
        let sq = row_sq_norms(codes, dim);
        Ok(nearest_rows(rows, codes, &sq, dim).index)
    }

    fn proposal_mask(
        &self,
        abnormality: &Vec<f32>,
        images: usize,
        grid: usize,
        vgrid: usize,
        ratio: f32,
    ) -> Result<(Vec<u32>, usize)> {
        if abnormality.len() != images * grid * grid || vgrid == 0 {
            return Err(Error::shape(format!(
                "proposal_mask: {} values for {images} maps of {grid}x{grid}",
                abnormality.len()
            )));
        }
        let k = crate::recon::masking::count_for(ratio, vgrid * vgrid);
        let mut flags = Vec::with_capacity(images * vgrid * vgrid);
        for a in abnormality.chunks(grid * grid) {
            let m = proposal_mask(&downsample_max(a, grid, vgrid), ratio);
            flags.extend(m.into_iter().map(u32::from));
        }
        Ok((flags, k))
    }

    fn masked_rows(&self, mask: &Vec<u32>, images: usize, n: usize, k: usize) -> Result<Vec<u32>> {
        if mask.len() != images * n {
            return Err(Error::shape(format!(
                "masked_rows: {} flags for {images} images of {n}",
                mask.len()
            )));
        }
        let rows: Vec<u32> = (0..mask.len() as u32)
            .filter(|&i| mask[i as usize] != 0)
            .collect();
        if rows.len() != images * k {
            return Err(Error::invalid(format!(
                "masked_rows: {} flags set, not {k} per image",
                rows.len()
            )));
        }
        Ok(rows)
    }

    fn pool_cells(
        &self,
        feats: &Vec<f32>,
        images: usize,
        grid: usize,
        vgrid: usize,
        dim: usize,
    ) -> Result<Vec<f32>> {
        if vgrid != crate::recon::GRID || feats.len() != images * grid * grid * dim {
            return Err(Error::shape(format!(
                "pool_cells: {} values for {images} images of {grid}x{grid}x{dim} to {vgrid}x{vgrid}",
                feats.len()
            )));
        }
        pool_to_vit_grid(feats, grid, dim)
    }

    fn scatter_rows(&self, v: &Vec<f32>, idx: &Vec<u32>, len: usize) -> Result<Vec<f32>> {
        let mut y = vec![0.0; len];
        for (&i, &x) in idx.iter().zip(v) {
            if let Some(slot) = y.get_mut(i as usize) {
                *slot = x;
            }
        }
        Ok(y)
    }

    fn upsample_product(
        &self,
        e: &Vec<f32>,
        a: Option<&Vec<f32>>,
        images: usize,
        vgrid: usize,
        grid: usize,
    ) -> Result<Vec<f32>> {
        if e.len() != images * vgrid * vgrid || a.is_some_and(|a| a.len() != images * grid * grid) {
            return Err(Error::shape(format!(
                "upsample_product: {} values for {images} maps of {vgrid}x{vgrid}",
                e.len()
            )));
        }
        let up = vit_to_feature_grid(e, vgrid, grid);
        Ok(match a {
            Some(a) => up.iter().zip(a).map(|(e, a)| e * a).collect(),
            None => up,
        })
    }

    fn maps(
        &self,
        patches: &Vec<f32>,
        images: usize,
        grid: usize,
        spec: &MapSpec,
    ) -> Result<Vec<f32>> {
        if patches.len() != images * grid * grid || grid == 0 {
            return Err(Error::shape(format!(
                "maps: {} patch scores for {images} maps of {grid}x{grid}",
                patches.len()
            )));
        }
        let side = spec.size * spec.size;
        let mut out = vec![0.0; images * side];
        out.par_chunks_mut(side.max(1))
            .zip(patches.par_chunks(grid * grid))
            .for_each(|(o, p)| patch_map_into(p, grid, spec, o));
        Ok(out)
    }

    fn image_scores(
        &self,
        maps: &Vec<f32>,
        images: usize,
        n: usize,
        score: ImageScore,
    ) -> Result<Vec<f32>> {
        if maps.len() != images * n || n == 0 {
            return Err(Error::shape(format!(
                "image_scores: {} values for {images} maps of {n}",
                maps.len()
            )));
        }
        Ok(maps.par_chunks(n).map(|m| score.of(m)).collect())
    }

    fn record_nonfinite(
        &self,
        x: &Vec<f32>,
        per: usize,
        flags: &mut Vec<f32>,
        slot: usize,
    ) -> Result<()> {
        let slots = SCORE_STAGES.len();
        if per == 0 || !x.len().is_multiple_of(per) || flags.len() != x.len() / per * slots {
            return Err(Error::shape(format!(
                "record_nonfinite: {} values in images of {per}, {} flags",
                x.len(),
                flags.len()
            )));
        }
        for (img, v) in x.chunks(per).enumerate() {
            if let Some(bad) = v.iter().find(|v| !v.is_finite()) {
                flags[img * slots + slot] = *bad;
            }
        }
        Ok(())
    }
}
