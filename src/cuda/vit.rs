//! The reconstruction stage's masked-token ViT ([`crate::recon::vit`]) for inference on the
//! GPU: the same forward pass, op for op, with weights uploaded once and every activation
//! kept on the device — the host sends the patch rows and the mask, and gets back one
//! entropy (and cross-entropy) per masked patch.
//!
//! Per block (pre-norm, as [`crate::recon::vit`]'s `block`): `LN1` (glue) -> q, k, v (three
//! cuBLAS GEMMs on the row blocks of `attn.qkv.weight`, split once at upload) -> fused
//! flash attention (`attention_fwd_*`) -> `proj` + bias + residual -> `LN2` -> `fc1` + bias ->
//! GELU -> `fc2` + bias + residual. Then the masked rows are gathered, normed, projected to
//! |V| logits and reduced by `entropy_fwd_f32` (fused softmax, entropy, cross-entropy).

use std::sync::Arc;

use super::CudaSlice;

use super::attention::{AttentionDims, attention_fwd};
use super::entropy::entropy_fwd;
use super::glue::{bias_residual_add, gather_rows, gelu_fwd, layernorm_fwd, mask_rows};
use super::linear::linear;
use super::{CudaDevice, CudaError, CudaResult};
use crate::recon::vit::{LN_EPS, Vit, VitConfig, unfold};

/// Images per forward pass (bounds activation memory, like the CPU path's chunks).
const CHUNK: usize = 64;

/// A linear layer's weight `[out, in]` and bias `[out]` on the device.
struct DeviceLinear {
    w: CudaSlice<f32>,
    b: CudaSlice<f32>,
    out: usize,
    inp: usize,
}

/// One pre-norm block's weights on the device.
struct DeviceBlock {
    ln1: (CudaSlice<f32>, CudaSlice<f32>),
    q: DeviceLinear,
    k: DeviceLinear,
    v: DeviceLinear,
    proj: DeviceLinear,
    ln2: (CudaSlice<f32>, CudaSlice<f32>),
    fc1: DeviceLinear,
    fc2: DeviceLinear,
}

/// A [`Vit`] resident on a GPU, for inference.
pub struct CudaVit {
    dev: Arc<CudaDevice>,
    config: VitConfig,
    patch_embed: DeviceLinear,
    mask_token: CudaSlice<f32>,
    pos: CudaSlice<f32>,
    encoder: Vec<DeviceBlock>,
    /// `encoder_norm` and `decoder_pos_embed`, when the model has a decoder.
    decoder_entry: Option<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)>,
    decoder: Vec<DeviceBlock>,
    norm: (CudaSlice<f32>, CudaSlice<f32>),
    head: DeviceLinear,
}

/// Reads parameters of a [`Vit`] by name and uploads them.
struct Uploader<'a> {
    dev: &'a CudaDevice,
    vit: &'a Vit,
}

impl Uploader<'_> {
    fn host(&self, name: &str) -> CudaResult<(&[f32], &[usize])> {
        let p = self.vit.params();
        let id = p
            .id(name)
            .ok_or_else(|| CudaError::Invalid(format!("ViT upload: no parameter '{name}'")))?;
        Ok((p.values(id), p.shape(id)))
    }

    fn vector(&self, name: &str) -> CudaResult<CudaSlice<f32>> {
        self.dev.upload(self.host(name)?.0)
    }

    fn linear(&self, prefix: &str) -> CudaResult<DeviceLinear> {
        let (w, shape) = self.host(&format!("{prefix}.weight"))?;
        let (b, _) = self.host(&format!("{prefix}.bias"))?;
        Ok(DeviceLinear {
            w: self.dev.upload(w)?,
            b: self.dev.upload(b)?,
            out: shape[0],
            inp: shape[1],
        })
    }

    /// Rows `[part * d, (part + 1) * d)` of a fused `qkv` linear, as its own layer.
    fn qkv_part(&self, prefix: &str, part: usize, d: usize) -> CudaResult<DeviceLinear> {
        let (w, shape) = self.host(&format!("{prefix}.weight"))?;
        let (b, _) = self.host(&format!("{prefix}.bias"))?;
        let inp = shape[1];
        Ok(DeviceLinear {
            w: self.dev.upload(&w[part * d * inp..(part + 1) * d * inp])?,
            b: self.dev.upload(&b[part * d..(part + 1) * d])?,
            out: d,
            inp,
        })
    }

    fn block(&self, prefix: &str, d: usize) -> CudaResult<DeviceBlock> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(DeviceBlock {
            ln1: (
                self.vector(&p("norm1.weight"))?,
                self.vector(&p("norm1.bias"))?,
            ),
            q: self.qkv_part(&p("attn.qkv"), 0, d)?,
            k: self.qkv_part(&p("attn.qkv"), 1, d)?,
            v: self.qkv_part(&p("attn.qkv"), 2, d)?,
            proj: self.linear(&p("attn.proj"))?,
            ln2: (
                self.vector(&p("norm2.weight"))?,
                self.vector(&p("norm2.bias"))?,
            ),
            fc1: self.linear(&p("mlp.fc1"))?,
            fc2: self.linear(&p("mlp.fc2"))?,
        })
    }
}

impl CudaVit {
    /// Uploads the weights of `vit` to `dev` (once; reused by every forward pass).
    pub fn upload(dev: Arc<CudaDevice>, vit: &Vit) -> CudaResult<CudaVit> {
        let c = vit.config().clone();
        if c.heads == 0 || c.width / c.heads > 128 {
            return Err(CudaError::Invalid(format!(
                "GPU ViT: head size {} / {} is over the attention kernels' 128",
                c.width, c.heads
            )));
        }
        let up = Uploader { dev: &dev, vit };
        let d = c.width;
        let encoder = (0..c.depth)
            .map(|i| up.block(&format!("blocks.{i}"), d))
            .collect::<CudaResult<Vec<_>>>()?;
        let (decoder_entry, decoder) = if c.decoder_depth > 0 {
            let entry = (
                up.vector("encoder_norm.weight")?,
                up.vector("encoder_norm.bias")?,
                up.vector("decoder_pos_embed")?,
            );
            let blocks = (0..c.decoder_depth)
                .map(|i| up.block(&format!("decoder.blocks.{i}"), d))
                .collect::<CudaResult<Vec<_>>>()?;
            (Some(entry), blocks)
        } else {
            (None, Vec::new())
        };
        Ok(CudaVit {
            patch_embed: up.linear("patch_embed.proj")?,
            mask_token: up.vector("mask_token")?,
            pos: up.vector("pos_embed")?,
            encoder,
            decoder_entry,
            decoder,
            norm: (up.vector("norm.weight")?, up.vector("norm.bias")?),
            head: up.linear("head")?,
            config: c,
            dev,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// [`Vit::token_uncertainty`] on the GPU: per patch (`[B·N]`), the entropy of the
    /// predicted token distribution where masked (0 elsewhere) and, with `tokens`, the
    /// cross-entropy of the patch's own token id.
    pub fn token_uncertainty(
        &self,
        images: &[f32],
        mask: &[bool],
        tokens: Option<&[u32]>,
    ) -> crate::Result<(Vec<f32>, Option<Vec<f32>>)> {
        let c = &self.config;
        let (n, per_image) = (c.patches(), c.image_len());
        if images.is_empty() || !images.len().is_multiple_of(per_image) {
            return Err(crate::Error::shape(format!(
                "ViT input: {} values are not a whole number of images of {per_image}",
                images.len()
            )));
        }
        let batch = images.len() / per_image;
        if mask.len() != batch * n || tokens.is_some_and(|t| t.len() != mask.len()) {
            return Err(crate::Error::shape(format!(
                "ViT input: {} mask flags / {:?} token ids for {batch} images of {n} patches",
                mask.len(),
                tokens.map(<[u32]>::len)
            )));
        }
        if let Some(&bad) = tokens
            .into_iter()
            .flatten()
            .zip(mask)
            .find(|(t, m)| **m && **t as usize >= c.vocab)
            .map(|(t, _)| t)
        {
            return Err(crate::Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        let mut entropy = vec![0.0; batch * n];
        let mut cross = tokens.map(|_| vec![0.0; batch * n]);
        for start in (0..batch).step_by(CHUNK) {
            let end = (start + CHUNK).min(batch);
            let m = &mask[start * n..end * n];
            let t = tokens.map(|t| &t[start * n..end * n]);
            let (rows, e, ce) =
                self.chunk_uncertainty(&images[start * per_image..end * per_image], m, t)?;
            for (i, &r) in rows.iter().enumerate() {
                entropy[start * n + r] = e[i];
                if let (Some(cross), Some(ce)) = (cross.as_mut(), ce.as_ref()) {
                    cross[start * n + r] = ce[i];
                }
            }
        }
        Ok((entropy, cross))
    }

    /// One chunk: (masked row indices, their entropies, their cross-entropies).
    #[allow(clippy::type_complexity)]
    fn chunk_uncertainty(
        &self,
        images: &[f32],
        mask: &[bool],
        tokens: Option<&[u32]>,
    ) -> CudaResult<(Vec<usize>, Vec<f32>, Option<Vec<f32>>)> {
        let dev = &*self.dev;
        let c = &self.config;
        let (n, d) = (c.patches(), c.width);
        let batch = mask.len() / n;
        let rows_all = batch * n;
        // Patch rows: pixels unfolded into `3·p²` vectors, or the given per-patch features.
        let patch_rows = if c.input_dim > 0 {
            images.to_vec()
        } else {
            unfold(images, c)
        };
        let x = dev.upload(&patch_rows)?;
        let pe = &self.patch_embed;
        let x = linear(dev, &x, &pe.w, &pe.b, None, rows_all, pe.inp, pe.out)?;
        // §5: masked patches become the shared [M] embedding; then positions (a "bias" of
        // N·D values over each image's row of the [B, N·D] view).
        let flags: Vec<i32> = mask.iter().map(|&m| i32::from(m)).collect();
        let x = mask_rows(dev, &x, &dev.upload(&flags)?, &self.mask_token, rows_all, d)?;
        let mut x = bias_residual_add(dev, &x, &self.pos, None, batch, n * d)?;
        for b in &self.encoder {
            x = self.block(b, &x, batch)?;
        }
        if let Some((g, beta, dec_pos)) = &self.decoder_entry {
            let (h, _, _) = layernorm_fwd(dev, &x, g, beta, rows_all, d, LN_EPS)?;
            x = bias_residual_add(dev, &h, dec_pos, None, batch, n * d)?;
            for b in &self.decoder {
                x = self.block(b, &x, batch)?;
            }
        }
        // Head on the masked rows only (layer norm is per row, so gathering first is exact).
        let rows: Vec<usize> = (0..rows_all).filter(|&i| mask[i]).collect();
        if rows.is_empty() {
            return Ok((rows, Vec::new(), tokens.map(|_| Vec::new())));
        }
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let g = gather_rows(dev, &x, &dev.upload(&idx)?, rows_all, d)?;
        let (g, _, _) = layernorm_fwd(dev, &g, &self.norm.0, &self.norm.1, rows.len(), d, LN_EPS)?;
        let h = &self.head;
        let logits = linear(dev, &g, &h.w, &h.b, None, rows.len(), h.inp, h.out)?;
        let targets = match tokens {
            Some(t) => {
                let ids: Vec<i32> = rows.iter().map(|&r| t[r] as i32).collect();
                Some(dev.upload(&ids)?)
            }
            None => None,
        };
        let out = entropy_fwd(dev, &logits, rows.len(), c.vocab, targets.as_ref(), false)?;
        let entropy = dev.download(&out.entropy)?;
        let ce = match &out.ce {
            Some(ce) => Some(dev.download(ce)?),
            None => None,
        };
        Ok((rows, entropy, ce))
    }

    /// One pre-norm block on `x [B·N, D]`: `x + Attn(LN1(x))`, then `+ MLP(LN2(·))`.
    fn block(
        &self,
        b: &DeviceBlock,
        x: &CudaSlice<f32>,
        batch: usize,
    ) -> CudaResult<CudaSlice<f32>> {
        let dev = &*self.dev;
        let c = &self.config;
        let (n, d) = (c.patches(), c.width);
        let rows = batch * n;
        let (h, _, _) = layernorm_fwd(dev, x, &b.ln1.0, &b.ln1.1, rows, d, LN_EPS)?;
        let lin = |l: &DeviceLinear, x: &CudaSlice<f32>, res: Option<&CudaSlice<f32>>| {
            linear(dev, x, &l.w, &l.b, res, rows, l.inp, l.out)
        };
        let (q, k, v) = (
            lin(&b.q, &h, None)?,
            lin(&b.k, &h, None)?,
            lin(&b.v, &h, None)?,
        );
        let dims = AttentionDims {
            batch,
            seq: n,
            heads: c.heads,
            head_dim: d / c.heads,
        };
        let (a, _lse) = attention_fwd(dev, &q, &k, &v, dims, None)?;
        let x = lin(&b.proj, &a, Some(x))?;
        let (h, _, _) = layernorm_fwd(dev, &x, &b.ln2.0, &b.ln2.1, rows, d, LN_EPS)?;
        let h = gelu_fwd(dev, &lin(&b.fc1, &h, None)?)?;
        lin(&b.fc2, &h, Some(&x))
    }
}
