//! The masked-token ViT's inference forward ([`super::vit`]), written once over the backend
//! op set [`InferOps`]: the CPU runs it on `src/ops` ([`CpuOps`](crate::backend::CpuOps)),
//! the CUDA backend on its
//! launchers (`crate::backend`'s `CudaOps`). Training keeps the autograd tape
//! ([`Vit::forward_with`]); this is the same math without a tape, and a test holds the two
//! equal.
//!
//! Per block (pre-norm, as the tape's `block`): `LN1` -> q, k, v (the row blocks of
//! `attn.qkv.weight`, three linears) -> attention -> `proj` + bias + residual -> `LN2` ->
//! `fc1` + bias -> GELU -> `fc2` + bias + residual. Then only the masked rows are gathered,
//! normed, projected to |V| logits and reduced to an entropy (and cross-entropy) each.

use crate::backend::{InferOps, Linear, Norm, RowEntropy, Uncertainty};
use crate::error::{Error, Result};
use crate::ops::attention::AttnShape;
use crate::recon::vit::{LN_EPS, Vit, VitConfig, unfold};

/// One pre-norm block's weights.
struct Block<W> {
    ln1: Norm<W>,
    q: Linear<W>,
    k: Linear<W>,
    v: Linear<W>,
    proj: Linear<W>,
    ln2: Norm<W>,
    fc1: Linear<W>,
    fc2: Linear<W>,
}

/// What runs between encoder and decoder (models with a decoder only).
struct DecoderEntry<W> {
    encoder_norm: Norm<W>,
    pos: W,
}

/// A [`Vit`]'s weights held by a backend `O`, for inference.
pub struct InferVit<O: InferOps> {
    ops: O,
    config: VitConfig,
    patch_embed: Linear<O::Weight>,
    mask_token: O::Weight,
    pos: O::Weight,
    encoder: Vec<Block<O::Weight>>,
    decoder_entry: Option<DecoderEntry<O::Weight>>,
    decoder: Vec<Block<O::Weight>>,
    norm: Norm<O::Weight>,
    head: Linear<O::Weight>,
}

/// Reads a [`Vit`]'s parameters by name into backend weights.
struct Loader<'a, O: InferOps> {
    ops: &'a O,
    vit: &'a Vit,
}

impl<O: InferOps> Loader<'_, O> {
    /// Values `range` of parameter `name` (all of it when `None`), and its shape.
    fn part(&self, name: &str, range: Option<(usize, usize)>) -> Result<(O::Weight, &[usize])> {
        let p = self.vit.params();
        let id = p
            .id(name)
            .ok_or_else(|| Error::invalid(format!("ViT inference: no parameter '{name}'")))?;
        let buf = p.shared(id);
        let (start, end) = range.unwrap_or((0, buf.len()));
        Ok((self.ops.weight(&buf, start..end)?, p.shape(id)))
    }

    fn vector(&self, name: &str) -> Result<O::Weight> {
        Ok(self.part(name, None)?.0)
    }

    fn norm(&self, prefix: &str) -> Result<Norm<O::Weight>> {
        Ok(Norm {
            gamma: self.vector(&format!("{prefix}.weight"))?,
            beta: self.vector(&format!("{prefix}.bias"))?,
        })
    }

    fn linear(&self, prefix: &str) -> Result<Linear<O::Weight>> {
        let (w, shape) = self.part(&format!("{prefix}.weight"), None)?;
        Ok(Linear {
            w,
            b: self.vector(&format!("{prefix}.bias"))?,
            out: shape[0],
            inp: shape[1],
        })
    }

    /// Output rows `[part·d, (part + 1)·d)` of the fused `qkv` linear, as a layer of its own.
    fn qkv_part(&self, prefix: &str, part: usize, d: usize) -> Result<Linear<O::Weight>> {
        let w_name = format!("{prefix}.weight");
        let inp = self.part(&w_name, None)?.1[1];
        let rows = (part * d, (part + 1) * d);
        Ok(Linear {
            w: self.part(&w_name, Some((rows.0 * inp, rows.1 * inp)))?.0,
            b: self.part(&format!("{prefix}.bias"), Some(rows))?.0,
            out: d,
            inp,
        })
    }

    fn block(&self, prefix: &str, d: usize) -> Result<Block<O::Weight>> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Block {
            ln1: self.norm(&p("norm1"))?,
            q: self.qkv_part(&p("attn.qkv"), 0, d)?,
            k: self.qkv_part(&p("attn.qkv"), 1, d)?,
            v: self.qkv_part(&p("attn.qkv"), 2, d)?,
            proj: self.linear(&p("attn.proj"))?,
            ln2: self.norm(&p("norm2"))?,
            fc1: self.linear(&p("mlp.fc1"))?,
            fc2: self.linear(&p("mlp.fc2"))?,
        })
    }
}

impl<O: InferOps> InferVit<O> {
    /// `vit`'s weights as backend `ops` holds them (a device uploads them here, once).
    pub fn new(ops: O, vit: &Vit) -> Result<InferVit<O>> {
        let c = vit.config().clone();
        let load = Loader { ops: &ops, vit };
        let d = c.width;
        let encoder = (0..c.depth)
            .map(|i| load.block(&format!("blocks.{i}"), d))
            .collect::<Result<Vec<_>>>()?;
        let (decoder_entry, decoder) = if c.decoder_depth > 0 {
            let entry = DecoderEntry {
                encoder_norm: load.norm("encoder_norm")?,
                pos: load.vector("decoder_pos_embed")?,
            };
            let blocks = (0..c.decoder_depth)
                .map(|i| load.block(&format!("decoder.blocks.{i}"), d))
                .collect::<Result<Vec<_>>>()?;
            (Some(entry), blocks)
        } else {
            (None, Vec::new())
        };
        Ok(InferVit {
            patch_embed: load.linear("patch_embed.proj")?,
            mask_token: load.vector("mask_token")?,
            pos: load.vector("pos_embed")?,
            encoder,
            decoder_entry,
            decoder,
            norm: load.norm("norm")?,
            head: load.linear("head")?,
            config: c,
            ops,
        })
    }

    /// [`Vit::token_uncertainty`]: per patch (`[B·N]`), the entropy of the predicted token
    /// distribution where masked (0 elsewhere) and, with `tokens`, the cross-entropy of the
    /// patch's own token id. `O::CHUNK` images per forward pass; masks and results cross to
    /// and from the backend here (the resident scoring pass calls
    /// [`forward_masked`](Self::forward_masked) with its own, device-made, ones).
    pub fn token_uncertainty(
        &self,
        images: &[f32],
        mask: &[bool],
        tokens: Option<&[u32]>,
    ) -> Result<Uncertainty> {
        let (o, c) = (&self.ops, &self.config);
        let batch = c.batch_of(images, mask)?;
        if let Some(t) = tokens {
            self.check_tokens(t, mask)?;
        }
        let (len, n) = (c.image_len(), c.patches());
        let mut entropy = vec![0.0; batch * n];
        let mut cross = tokens.map(|_| vec![0.0; batch * n]);
        for start in (0..batch).step_by(O::CHUNK) {
            let end = (start + O::CHUNK).min(batch);
            let m = &mask[start * n..end * n];
            let rows: Vec<u32> = (0..m.len() as u32).filter(|&i| m[i as usize]).collect();
            if rows.is_empty() {
                continue;
            }
            let targets = match tokens {
                Some(t) => {
                    Some(o.indices(rows.iter().map(|&r| t[start * n + r as usize]).collect())?)
                }
                None => None,
            };
            let flags = o.indices(m.iter().map(|&f| u32::from(f)).collect())?;
            let x = o.input(self.patch_rows(&images[start * len..end * len]))?;
            let idx = o.indices(rows.clone())?;
            let (e, ce) =
                self.forward_masked(x, &flags, &idx, rows.len(), end - start, targets.as_ref())?;
            let e = o.to_host(&e)?;
            for (i, &r) in rows.iter().enumerate() {
                entropy[start * n + r as usize] = e[i];
            }
            if let (Some(cross), Some(ce)) = (cross.as_mut(), ce) {
                let ce = o.to_host(&ce)?;
                for (i, &r) in rows.iter().enumerate() {
                    cross[start * n + r as usize] = ce[i];
                }
            }
        }
        Ok((entropy, cross))
    }

    /// The model's configuration.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// One id per patch, each masked patch's inside the vocabulary.
    fn check_tokens(&self, tokens: &[u32], mask: &[bool]) -> Result<()> {
        if tokens.len() != mask.len() {
            return Err(Error::shape(format!(
                "token cross-entropy: {} token ids for {} patches",
                tokens.len(),
                mask.len()
            )));
        }
        let vocab = self.config.vocab;
        match (0..mask.len()).find(|&r| mask[r] && tokens[r] as usize >= vocab) {
            Some(r) => Err(Error::invalid(format!(
                "token id {} at patch {r} is outside the vocabulary of {vocab}",
                tokens[r]
            ))),
            None => Ok(()),
        }
    }

    /// The patch rows `[B·N, patch_dim]` the patch embedding reads: per-patch features as
    /// they are, or pixels `[B, 3, S, S]` unfolded into patches (on the host).
    pub fn patch_rows(&self, images: &[f32]) -> Vec<f32> {
        if self.config.input_dim > 0 {
            images.to_vec()
        } else {
            unfold(images, &self.config)
        }
    }

    /// The forward pass of `batch` whole images on the backend: `patch_rows`
    /// `[batch·N, patch_dim]` ([`patch_rows`](Self::patch_rows), or pooled features made on
    /// the backend), `mask` one 0/1 flag per patch, `rows` the `m` flat ids of the masked
    /// patches (ascending), `targets` their own token ids. Returns the entropy (and
    /// cross-entropy) of each masked patch, in `rows` order.
    pub fn forward_masked(
        &self,
        patch_rows: O::Act,
        mask: &O::Idx,
        rows: &O::Idx,
        m: usize,
        batch: usize,
        targets: Option<&O::Idx>,
    ) -> Result<RowEntropy<O::Act>> {
        let (o, c) = (&self.ops, &self.config);
        let (n, d) = (c.patches(), c.width);
        let rows_all = batch * n;
        // Patch embedding: a stride-p conv = unfold + linear (or the given per-patch features).
        let x = o.linear(&patch_rows, &self.patch_embed, None, rows_all)?;
        // §5: masked patches become the one shared [M] embedding, then every token gets its
        // position (a bias of N·D values over each image's row of the [B, N·D] view).
        let x = o.mask_rows(x, mask, &self.mask_token, d)?;
        let mut x = o.add_bias(x, &self.pos, batch, n * d)?;
        for b in &self.encoder {
            x = self.block(b, &x, batch)?;
        }
        if let Some(entry) = &self.decoder_entry {
            let h = o.layernorm(&x, &entry.encoder_norm, rows_all, d, LN_EPS)?;
            x = o.add_bias(h, &entry.pos, batch, n * d)?;
            for b in &self.decoder {
                x = self.block(b, &x, batch)?;
            }
        }
        // Head on the masked rows only (layer norm is per row, so gathering first is exact).
        let g = o.gather_rows(&x, rows, d)?;
        let g = o.layernorm(&g, &self.norm, m, d, LN_EPS)?;
        let logits = o.linear(&g, &self.head, None, m)?;
        o.entropy(&logits, m, c.vocab, targets)
    }

    /// One pre-norm block on `x [B·N, D]`: `x + Attn(LN1(x))`, then `+ MLP(LN2(·))`.
    fn block(&self, b: &Block<O::Weight>, x: &O::Act, batch: usize) -> Result<O::Act> {
        let (o, c) = (&self.ops, &self.config);
        let (n, d) = (c.patches(), c.width);
        let rows = batch * n;
        let h = o.layernorm(x, &b.ln1, rows, d, LN_EPS)?;
        let (q, k, v) = (
            o.linear(&h, &b.q, None, rows)?,
            o.linear(&h, &b.k, None, rows)?,
            o.linear(&h, &b.v, None, rows)?,
        );
        let shape = AttnShape {
            batch,
            tokens: n,
            heads: c.heads,
            head_dim: d / c.heads,
        };
        let a = o.attention(&q, &k, &v, shape)?;
        let x = o.linear(&a, &b.proj, Some(x), rows)?;
        let h = o.layernorm(&x, &b.ln2, rows, d, LN_EPS)?;
        let h = o.gelu(o.linear(&h, &b.fc1, None, rows)?)?;
        o.linear(&h, &b.fc2, Some(&x), rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Tape;
    use crate::backend::CpuOps;
    use crate::ops::softmax::{entropy_rows, logsumexp};
    use crate::rng::Rng;

    /// A seeded ViT with weights wider than the 0.02 init (so every layer moves the output).
    fn random_vit(c: &VitConfig, seed: u64) -> Vit {
        let mut vit = Vit::new(c.clone(), seed).unwrap();
        let mut r = Rng::new(seed + 1);
        let ids: Vec<_> = vit.params().ids().collect();
        for id in ids {
            let norm_scale = vit.params().name(id).ends_with("norm1.weight")
                || vit.params().name(id).ends_with("norm2.weight")
                || vit.params().name(id).ends_with("norm.weight");
            let base = if norm_scale { 1.0 } else { 0.0 };
            for v in vit.params_mut().values_mut(id) {
                *v = base + r.range(-0.4, 0.4);
            }
        }
        vit
    }

    /// The tape forward (`Tape::no_grad` + [`Vit::forward`]) reduced to per-patch maps.
    fn tape_maps(vit: &Vit, images: &[f32], mask: &[bool], tokens: &[u32]) -> Uncertainty {
        let v = vit.config().vocab;
        let t = Tape::no_grad();
        let o = vit.forward(&t, images, mask).unwrap();
        let logits = t.value(o.logits);
        let (mut e, mut ce) = (vec![0.0; mask.len()], vec![0.0; mask.len()]);
        for ((&r, h), row) in o
            .rows
            .iter()
            .zip(entropy_rows(&logits, v))
            .zip(logits.chunks(v))
        {
            e[r] = h;
            ce[r] = logsumexp(row) - row[tokens[r] as usize];
        }
        (e, Some(ce))
    }

    /// The generic forward on the CPU equals the tape forward (same kernels; only the qkv
    /// GEMM is split in three) on ragged configs: odd batches, encoder-only and with a
    /// decoder, pixel and feature input, one batch over [`CpuOps::CHUNK`] images.
    #[test]
    fn cpu_forward_equals_tape_forward() {
        let micro = VitConfig {
            image_size: 8,
            patch: 4,
            width: 12,
            depth: 2,
            decoder_depth: 0,
            heads: 3,
            mlp: 20,
            vocab: 7,
            input_dim: 0,
        };
        let cases = [
            (micro.clone(), 3),
            (
                VitConfig {
                    decoder_depth: 1,
                    ..micro.clone()
                },
                5,
            ),
            (
                VitConfig {
                    input_dim: 6,
                    decoder_depth: 2,
                    ..micro.clone()
                },
                1,
            ),
            (
                VitConfig {
                    image_size: 12,
                    heads: 2,
                    ..micro.clone()
                },
                CpuOps::CHUNK + 3,
            ),
        ];
        for (k, (c, batch)) in cases.into_iter().enumerate() {
            let vit = random_vit(&c, 40 + k as u64);
            let mut r = Rng::new(k as u64);
            let n = batch * c.patches();
            let images: Vec<f32> = (0..batch * c.image_len())
                .map(|_| r.range(-1.0, 1.0))
                .collect();
            let mask: Vec<bool> = (0..n).map(|_| r.below(3) == 0).collect();
            let tokens: Vec<u32> = (0..n).map(|_| r.below(c.vocab) as u32).collect();
            let want = tape_maps(&vit, &images, &mask, &tokens);
            let got = InferVit::new(CpuOps, &vit)
                .unwrap()
                .token_uncertainty(&images, &mask, Some(&tokens))
                .unwrap();
            let pairs = [
                (&got.0, &want.0),
                (got.1.as_ref().unwrap(), want.1.as_ref().unwrap()),
            ];
            for (g, w) in pairs {
                for i in 0..n {
                    let tol = 1e-5 + 1e-4 * w[i].abs();
                    assert!(
                        (g[i] - w[i]).abs() <= tol,
                        "case {k} patch {i}: {} vs {}",
                        g[i],
                        w[i]
                    );
                    assert_eq!(
                        g[i] == 0.0,
                        !mask[i],
                        "case {k} patch {i}: zero iff unmasked"
                    );
                }
            }
            // Entropy only: the same entropies, no cross-entropy.
            let (e, ce) = vit.token_uncertainty(&images, &mask, None).unwrap();
            assert_eq!((e, ce), (got.0, None));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = VitConfig::preset("tiny", 16).unwrap();
        let vit = Vit::new(
            VitConfig {
                image_size: 32,
                ..c
            },
            1,
        )
        .unwrap();
        let gv = InferVit::new(CpuOps, &vit).unwrap();
        let n = vit.config().patches();
        let img = vec![0.0; vit.config().image_len()];
        let mask = vec![true; n];
        assert!(gv.token_uncertainty(&img[1..], &mask, None).is_err());
        assert!(gv.token_uncertainty(&img, &mask[1..], None).is_err());
        assert!(
            gv.token_uncertainty(&img, &mask, Some(&vec![0; n - 1]))
                .is_err()
        );
        let e = gv
            .token_uncertainty(&img, &mask, Some(&vec![16; n]))
            .unwrap_err();
        assert!(e.to_string().contains("token id 16"), "{e}");
    }
}
