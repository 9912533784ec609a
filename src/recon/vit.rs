//! The masked-token ViT of PMAD's reconstruction stage (METHOD.md §5-7).
//!
//! The image is cut into `patch x patch` patches (224/16 -> a 14x14 grid, [`super::PATCHES`]
//! tokens; the grid always derives from `image_size / patch`, so tests run on 2x2 grids).
//! Every patch is embedded linearly (a stride-`patch` convolution written as unfold + linear);
//! masked patches are replaced by one shared learnable `[M]` embedding (§5); learned position
//! embeddings are added; pre-norm transformer blocks follow; a final layer norm and a linear
//! head give, for every *masked* patch, logits over the visual-token vocabulary (§6).
//!
//! Encoder and decoder (§5): the paper uses a ViT encoder AND a ViT decoder, the authors'
//! release a BEiT-style encoder with a linear head. `decoder_depth = 0` is the release's
//! encoder-only model. With `decoder_depth > 0` the encoder output is layer-normed, fresh
//! decoder position embeddings are added (MAE's decoder re-injects positions) and
//! `decoder_depth` more pre-norm blocks of the same width run before the head.
//!
//! Only masked rows reach the head: the training loss is a cross-entropy over masked patches
//! only, and at inference unmasked patches score 0 (§7), so the `[rows, vocab]` head product —
//! the largest matrix of the model at |V| = 8192 — is computed only where it is used.
//! [`Vit::forward`] therefore returns the logits of the masked rows plus their indices.
//!
//! Parameter names follow timm/BEiT (`blocks.{i}.attn.qkv.weight`, ...); the patch embedding
//! is stored as a `[width, 3*patch*patch]` matrix, i.e. a conv weight `[width, 3, p, p]`
//! flattened in (channel, row, column) order. Weight decay is off for biases, norms, the mask
//! token and the position embeddings (BEiT's `no_weight_decay`), on for every matrix.

use crate::autograd::{ParamStore, Tape, Var};
use crate::backend::CpuOps;
use crate::error::{Error, Result};
use crate::recon::vit_infer::InferVit;
use crate::rng::Rng;
use crate::weights::{SafeTensors, write_safetensors};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Layer-norm epsilon (BEiT/MAE use 1e-6).
pub const LN_EPS: f32 = 1e-6;
/// Names accepted by [`VitConfig::preset`].
pub const PRESETS: [&str; 3] = ["tiny", "small", "base"];
/// `__metadata__` keys of a saved model.
const META_FORMAT: &str = "format";
const META_CONFIG: &str = "vit_config";
const FORMAT_NAME: &str = "pmad-vit";
/// Tensors whose names start with these may share a file with the model (a training
/// checkpoint also holds optimizer and trainer state); [`Vit::load`] skips them.
pub(crate) const NON_MODEL_PREFIXES: [&str; 2] = ["adamw.", "train."];

/// Sizes of the ViT. Serialized into every saved model and checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Side of the square input in pixels (224 in the paper).
    pub image_size: usize,
    /// Side of a patch in pixels (16); the grid is `image_size / patch` per side.
    pub patch: usize,
    /// Token width `D`.
    pub width: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Extra pre-norm blocks after the encoder (0 = encoder only, as the authors' release).
    pub decoder_depth: usize,
    /// Attention heads (`width % heads == 0`).
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp: usize,
    /// Visual-token vocabulary size |V| (8192 in the paper).
    pub vocab: usize,
    /// What a patch token is made from. 0: its pixels (the paper: a `3·patch²` vector, the
    /// input is `[B, 3, S, S]` images). `k > 0`: a `k`-dim feature per patch given directly
    /// (the input is `[B, N, k]`, e.g. the frozen backbone's features pooled to the ViT grid)
    /// — a CPU-sized variant: the ViT then learns only the context model, not vision from
    /// pixels. (On one real class its masked-token loss fell no faster than with pixels.)
    #[serde(default)]
    pub input_dim: usize,
}

impl VitConfig {
    /// A named size at 224x224 input, 16x16 patches:
    /// - `tiny` (tests, smoke runs): width 64, 2 encoder + 1 decoder blocks, 2 heads, MLP 128;
    /// - `small` (the CPU default): width 192, 6 + 2 blocks, 3 heads, MLP 768 (ViT-Ti-like);
    /// - `base` (the paper's ViT-B): width 768, 12 blocks, 12 heads, MLP 3072, no decoder
    ///   (the release's encoder-only BEiT layout).
    pub fn preset(name: &str, vocab: usize) -> Result<VitConfig> {
        let (width, depth, decoder_depth, heads, mlp) = match name {
            "tiny" => (64, 2, 1, 2, 128),
            "small" => (192, 6, 2, 3, 768),
            "base" => (768, 12, 0, 12, 3072),
            _ => {
                return Err(Error::invalid(format!(
                    "unknown ViT preset {name:?}; the presets are {}",
                    PRESETS.join(", ")
                )));
            }
        };
        let c = VitConfig {
            image_size: 224,
            patch: 16,
            width,
            depth,
            decoder_depth,
            heads,
            mlp,
            vocab,
            input_dim: 0,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks every size; the message names the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(format!("ViT config: {msg}")));
        let positive = [
            ("image_size", self.image_size),
            ("patch", self.patch),
            ("width", self.width),
            ("depth", self.depth),
            ("heads", self.heads),
            ("mlp", self.mlp),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be at least 1"));
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return bad(format!(
                "image_size {} is not a multiple of patch {}",
                self.image_size, self.patch
            ));
        }
        if !self.width.is_multiple_of(self.heads) {
            return bad(format!(
                "width {} is not a multiple of heads {}",
                self.width, self.heads
            ));
        }
        if self.vocab < 2 {
            return bad(format!("vocab {} must be at least 2", self.vocab));
        }
        if self.vocab > u32::MAX as usize {
            return bad(format!("vocab {} does not fit token ids (u32)", self.vocab));
        }
        // Upper bounds keep the parameter allocation of a tampered config bounded (ViT-L
        // sizes fit well inside them).
        let bounded = [
            ("image_size", self.image_size, 1024),
            ("width", self.width, 8192),
            ("depth", self.depth, 64),
            ("decoder_depth", self.decoder_depth, 64),
            ("heads", self.heads, 128),
            ("mlp", self.mlp, 32768),
            ("vocab", self.vocab, 1 << 16),
            ("input_dim", self.input_dim, 8192),
        ];
        if let Some((name, v, max)) = bounded.iter().find(|(_, v, max)| v > max) {
            return bad(format!("{name} {v} is above the limit {max}"));
        }
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Patches (tokens) per image.
    pub fn patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Values of one patch's input vector: `3·patch²` pixels, or `input_dim` features.
    pub fn patch_dim(&self) -> usize {
        if self.input_dim > 0 {
            self.input_dim
        } else {
            3 * self.patch * self.patch
        }
    }

    /// Values of one image's input: a `[3, S, S]` image, or `[N, input_dim]` features.
    pub fn image_len(&self) -> usize {
        if self.input_dim > 0 {
            self.patches() * self.input_dim
        } else {
            3 * self.image_size * self.image_size
        }
    }

    /// Number of images in `images` after checking it and `mask` against the config.
    pub(crate) fn batch_of(&self, images: &[f32], mask: &[bool]) -> Result<usize> {
        let (len, n) = (self.image_len(), self.patches());
        if images.is_empty() || !images.len().is_multiple_of(len) {
            // A feature-input ViT reads one feature vector per patch, not pixels.
            let unit = if self.input_dim > 0 {
                format!("[{}, {}] patch-feature", self.patches(), self.input_dim)
            } else {
                format!("[3, {s}, {s}]", s = self.image_size)
            };
            return Err(Error::shape(format!(
                "ViT input: {} values are not a whole number of {unit} images",
                images.len(),
            )));
        }
        let batch = images.len() / len;
        if mask.len() != batch * n {
            return Err(Error::shape(format!(
                "ViT input: {} mask flags for {batch} images of {n} patches",
                mask.len()
            )));
        }
        Ok(batch)
    }

    /// Total blocks (encoder + decoder).
    pub fn blocks(&self) -> usize {
        self.depth + self.decoder_depth
    }

    /// `(name, shape, init)` of every parameter, in the order [`Vit::forward_with`] reads them.
    fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, n) = (self.width, self.patches());
        let mut s = vec![
            spec(
                "patch_embed.proj.weight",
                &[d, self.patch_dim()],
                Init::Normal,
            ),
            spec("patch_embed.proj.bias", &[d], Init::Zeros),
            spec("mask_token", &[d], Init::Normal),
            spec("pos_embed", &[n, d], Init::Normal),
        ];
        for i in 0..self.depth {
            s.extend(block_specs(&format!("blocks.{i}"), d, self.mlp, i + 1));
        }
        if self.decoder_depth > 0 {
            s.push(spec("encoder_norm.weight", &[d], Init::Ones));
            s.push(spec("encoder_norm.bias", &[d], Init::Zeros));
            s.push(spec("decoder_pos_embed", &[n, d], Init::Normal));
            for i in 0..self.decoder_depth {
                let layer = self.depth + i + 1;
                s.extend(block_specs(
                    &format!("decoder.blocks.{i}"),
                    d,
                    self.mlp,
                    layer,
                ));
            }
        }
        s.push(spec("norm.weight", &[d], Init::Ones));
        s.push(spec("norm.bias", &[d], Init::Zeros));
        s.push(spec("head.weight", &[self.vocab, d], Init::Normal));
        s.push(spec("head.bias", &[self.vocab], Init::Zeros));
        s
    }
}

/// How a parameter starts (see [`Vit::new`]).
#[derive(Clone, Copy, Debug)]
enum Init {
    Zeros,
    Ones,
    /// Truncated normal, std 0.02 (timm/BEiT `trunc_normal_(std=.02)`).
    Normal,
    /// Truncated normal, std 0.02 / sqrt(2·layer): BEiT's `fix_init_weight` for the two
    /// projections that write into the residual stream of block `layer` (1-based).
    NormalRescaled(usize),
}

struct ParamSpec {
    name: String,
    shape: Vec<usize>,
    init: Init,
}

fn spec(name: &str, shape: &[usize], init: Init) -> ParamSpec {
    ParamSpec {
        name: name.to_string(),
        shape: shape.to_vec(),
        init,
    }
}

/// Parameters of one pre-norm block, in the order [`block`] reads them.
fn block_specs(prefix: &str, d: usize, mlp: usize, layer: usize) -> Vec<ParamSpec> {
    let p = |n: &str| format!("{prefix}.{n}");
    vec![
        spec(&p("norm1.weight"), &[d], Init::Ones),
        spec(&p("norm1.bias"), &[d], Init::Zeros),
        spec(&p("attn.qkv.weight"), &[3 * d, d], Init::Normal),
        spec(&p("attn.qkv.bias"), &[3 * d], Init::Zeros),
        spec(&p("attn.proj.weight"), &[d, d], Init::NormalRescaled(layer)),
        spec(&p("attn.proj.bias"), &[d], Init::Zeros),
        spec(&p("norm2.weight"), &[d], Init::Ones),
        spec(&p("norm2.bias"), &[d], Init::Zeros),
        spec(&p("mlp.fc1.weight"), &[mlp, d], Init::Normal),
        spec(&p("mlp.fc1.bias"), &[mlp], Init::Zeros),
        spec(&p("mlp.fc2.weight"), &[d, mlp], Init::NormalRescaled(layer)),
        spec(&p("mlp.fc2.bias"), &[d], Init::Zeros),
    ]
}

/// `n` draws of `N(0, std²)` truncated to `[-2·std, 2·std]` (redrawn when outside).
fn trunc_normal(n: usize, std: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            loop {
                let z = rng.normal();
                if z.abs() <= 2.0 {
                    break std * z;
                }
            }
        })
        .collect()
}

/// Reads a weight list in order; running out, or leaving some unread, is an error.
struct Weights<'a> {
    w: &'a [Var],
    next: usize,
}

impl Weights<'_> {
    /// The next `N` weights.
    fn take_n<const N: usize>(&mut self) -> Result<[Var; N]> {
        let end = self.next + N;
        let s = self.w.get(self.next..end).ok_or_else(|| {
            Error::invalid(format!("ViT forward: only {} weights given", self.w.len()))
        })?;
        self.next = end;
        Ok(s.try_into().expect("a slice of N weights"))
    }
}

/// One pre-norm block on `x[B, N, D]`: `x + Attn(LN1(x))`, then `+ MLP(LN2(·))` with GELU.
fn block(t: &Tape, w: &[Var; 12], x: Var, heads: usize) -> Result<Var> {
    let h = t.layernorm(x, w[0], w[1], LN_EPS)?;
    let (q, k, v) = t.split_qkv(t.linear(h, w[2], Some(w[3]))?)?;
    let a = t.attention(q, k, v, heads)?;
    let x = t.add(x, t.linear(a, w[4], Some(w[5]))?)?;
    let h = t.layernorm(x, w[6], w[7], LN_EPS)?;
    let h = t.gelu(t.linear(h, w[8], Some(w[9]))?);
    t.add(x, t.linear(h, w[10], Some(w[11]))?)
}

/// `[B, 3, S, S]` images -> `[B·N, 3·p·p]` patch rows: row `b·N + gy·G + gx`, columns in
/// (channel, row-in-patch, column-in-patch) order — the layout of a flattened conv weight.
pub(crate) fn unfold(images: &[f32], c: &VitConfig) -> Vec<f32> {
    let (s, p, g, pd) = (c.image_size, c.patch, c.grid(), c.patch_dim());
    let mut out = vec![0.0; images.len() / c.image_len() * c.patches() * pd];
    out.par_chunks_mut(pd).enumerate().for_each(|(row, dst)| {
        let (b, cell) = (row / (g * g), row % (g * g));
        let (gy, gx) = (cell / g, cell % g);
        let img = &images[b * c.image_len()..(b + 1) * c.image_len()];
        for ch in 0..3 {
            for ky in 0..p {
                let src = ch * s * s + (gy * p + ky) * s + gx * p;
                let o = (ch * p + ky) * p;
                dst[o..o + p].copy_from_slice(&img[src..src + p]);
            }
        }
    });
    out
}

/// Logits of the masked patches of a batch.
#[derive(Clone, Debug)]
pub struct VitOutput {
    /// `[rows.len(), vocab]` logits, one row per masked patch.
    pub logits: Var,
    /// For each logits row, its patch index in the batch (`b·N + patch`), ascending.
    pub rows: Vec<usize>,
}

/// The masked-token ViT: its config and its parameters.
#[derive(Clone, Debug)]
pub struct Vit {
    config: VitConfig,
    params: ParamStore,
}

impl Vit {
    /// A freshly initialised model (std-0.02 truncated normals for matrices and embeddings,
    /// BEiT's depth rescaling of the residual projections, zero biases, unit norm scales),
    /// drawn in parameter order from `seed`.
    pub fn new(config: VitConfig, seed: u64) -> Result<Vit> {
        Vit::build(config, Some(&mut Rng::new(seed)))
    }

    /// The parameter store, initialised from `rng`, or all zeros (to be overwritten by a
    /// load) when `rng` is `None`.
    fn build(config: VitConfig, mut rng: Option<&mut Rng>) -> Result<Vit> {
        config.validate()?;
        let mut params = ParamStore::new();
        for s in config.param_specs() {
            let n = s.shape.iter().product();
            let values = match (s.init, rng.as_deref_mut()) {
                (Init::Ones, _) => vec![1.0; n],
                (Init::Zeros, _) | (_, None) => vec![0.0; n],
                (Init::Normal, Some(r)) => trunc_normal(n, 0.02, r),
                (Init::NormalRescaled(layer), Some(r)) => {
                    trunc_normal(n, 0.02 / (2.0 * layer as f32).sqrt(), r)
                }
            };
            let id = params.add(&s.name, values, &s.shape)?;
            if s.name.ends_with("pos_embed") {
                params.set_decay(id, false); // an embedding, though a matrix
            }
        }
        Ok(Vit { config, params })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The parameters (names and shapes as in the module docs).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// Mutable parameters, for an optimizer. Adding parameters breaks the forward pass
    /// (it reports an error); change values only.
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// Binds every parameter to `tape` (no copy), in store order — the weight list that
    /// [`Vit::forward_with`] takes.
    pub fn bind(&self, tape: &Tape) -> Vec<Var> {
        self.params
            .ids()
            .map(|id| tape.param_id(&self.params, id))
            .collect()
    }

    /// [`Vit::forward_with`] on this model's own parameters.
    pub fn forward(&self, tape: &Tape, images: &[f32], mask: &[bool]) -> Result<VitOutput> {
        let w = self.bind(tape);
        self.forward_with(tape, &w, images, mask)
    }

    /// Logits of the masked patches. `images` is `[B, 3, S, S]` (normalised CHW, batch-major),
    /// `mask` is `[B·N]` with `true` = replaced by `[M]`; `w` holds one `Var` per parameter in
    /// store order (from [`Vit::bind`], or gradcheck variables of the same shapes).
    pub fn forward_with(
        &self,
        t: &Tape,
        w: &[Var],
        images: &[f32],
        mask: &[bool],
    ) -> Result<VitOutput> {
        let c = &self.config;
        let batch = c.batch_of(images, mask)?;
        let (n, d) = (c.patches(), c.width);
        let mut w = Weights { w, next: 0 };
        // Patch embedding: a stride-p conv = unfold + linear.
        let patch_rows = if c.input_dim > 0 {
            images.to_vec()
        } else {
            unfold(images, c)
        };
        let patches = t.constant(patch_rows, &[batch * n, c.patch_dim()])?;
        let [pe_w, pe_b, mask_token, pos] = w.take_n()?;
        let x = t.linear(patches, pe_w, Some(pe_b))?;
        // §5: masked patches are replaced by the one shared [M] embedding (their pixels are
        // never seen), then every token gets its position.
        let x = t.mask_token_select(x, mask_token, mask)?;
        let mut x = t.add(t.reshape(x, &[batch, n, d])?, pos)?;
        for _ in 0..c.depth {
            x = block(t, &w.take_n()?, x, c.heads)?;
        }
        if c.decoder_depth > 0 {
            let [g, b, dec_pos] = w.take_n()?;
            x = t.add(t.layernorm(x, g, b, LN_EPS)?, dec_pos)?;
            for _ in 0..c.decoder_depth {
                x = block(t, &w.take_n()?, x, c.heads)?;
            }
        }
        // Head on masked rows only (layer norm is per row, so gathering first is exact).
        let rows: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
        let x = t.gather_rows(t.reshape(x, &[batch * n, d])?, &rows)?;
        let [g, b, head_w, head_b] = w.take_n()?;
        let x = t.layernorm(x, g, b, LN_EPS)?;
        let logits = t.linear(x, head_w, Some(head_b))?;
        if w.next != w.w.len() {
            return Err(Error::invalid(format!(
                "ViT forward: {} weights given, the model has {}",
                w.w.len(),
                w.next
            )));
        }
        Ok(VitOutput { logits, rows })
    }

    /// The training loss (§"Training the reconstruction model"): mean cross-entropy of the
    /// masked patches' logits against their target token ids `tokens` (`[B·N]`, entries at
    /// unmasked patches are ignored). Returns the scalar loss and the forward output.
    pub fn loss_with(
        &self,
        t: &Tape,
        w: &[Var],
        images: &[f32],
        mask: &[bool],
        tokens: &[u32],
    ) -> Result<(Var, VitOutput)> {
        if tokens.len() != mask.len() {
            return Err(Error::shape(format!(
                "ViT loss: {} token ids for {} patches",
                tokens.len(),
                mask.len()
            )));
        }
        let out = self.forward_with(t, w, images, mask)?;
        if out.rows.is_empty() {
            return Err(Error::invalid(
                "ViT loss: no patch is masked, so there is nothing to predict",
            ));
        }
        let targets = self.targets(&out.rows, tokens)?;
        let local: Vec<usize> = (0..out.rows.len()).collect();
        let loss = t.cross_entropy_rows(out.logits, &targets, &local)?;
        Ok((loss, out))
    }

    /// Token ids of `rows` as class indices, each checked against the vocabulary.
    fn targets(&self, rows: &[usize], tokens: &[u32]) -> Result<Vec<usize>> {
        rows.iter()
            .map(|&r| {
                let id = tokens[r] as usize;
                if id >= self.config.vocab {
                    return Err(Error::invalid(format!(
                        "token id {id} at patch {r} is outside the vocabulary of {}",
                        self.config.vocab
                    )));
                }
                Ok(id)
            })
            .collect()
    }

    /// §7 uncertainty: per patch (`[B·N]`), the entropy `-Σ p log p` of the predicted token
    /// distribution where masked, 0 where not. Values lie in `[0, ln |V|]`.
    pub fn token_entropy(&self, images: &[f32], mask: &[bool]) -> Result<Vec<f32>> {
        Ok(self.token_uncertainty(images, mask, None)?.0)
    }

    /// The release's variant of §7: per patch, the cross-entropy `-log p(own token)` of the
    /// patch's own token id (`tokens` is `[B·N]`) where masked, 0 where not.
    pub fn token_cross_entropy(
        &self,
        images: &[f32],
        mask: &[bool],
        tokens: &[u32],
    ) -> Result<Vec<f32>> {
        Ok(self
            .token_uncertainty(images, mask, Some(tokens))?
            .1
            .expect("asked for"))
    }

    /// Both §7 maps from ONE forward pass: the entropy, and with `tokens` also the
    /// cross-entropy of each patch's own token. Layout `[B·N]`, 0 where unmasked. Runs the
    /// tape-free inference forward ([`InferVit`]) on the CPU.
    pub fn token_uncertainty(
        &self,
        images: &[f32],
        mask: &[bool],
        tokens: Option<&[u32]>,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        InferVit::new(CpuOps, self)?.token_uncertainty(images, mask, tokens)
    }

    /// Writes the model to `path` as safetensors (atomically: temp file + rename), the
    /// config as JSON in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_safetensors(path, self.params.to_tensors(), Some(&self.metadata()?))
    }

    /// The `__metadata__` of a saved model (format name and config JSON).
    pub(crate) fn metadata(&self) -> Result<BTreeMap<String, String>> {
        let config = serde_json::to_string(&self.config)
            .map_err(|e| Error::invalid(format!("ViT config to JSON: {e}")))?;
        Ok(BTreeMap::from([
            (META_FORMAT.to_string(), FORMAT_NAME.to_string()),
            (META_CONFIG.to_string(), config),
        ]))
    }

    /// Reads a model written by [`Vit::save`] (or a training checkpoint, whose optimizer and
    /// trainer entries are skipped). Every parameter must be present with the shape the
    /// stored config implies; errors name the file and the tensor.
    pub fn load(path: &Path) -> Result<Vit> {
        let st = SafeTensors::open(path)?;
        let config = Vit::config_of(&st)?;
        Vit::from_safetensors(&st, config)
    }

    /// The config stored in the metadata of `st`.
    pub(crate) fn config_of(st: &SafeTensors) -> Result<VitConfig> {
        let text = st.metadata().get(META_CONFIG).ok_or_else(|| {
            Error::format(
                st.path(),
                format!("no '{META_CONFIG}' in the metadata: not a pmad ViT file"),
            )
        })?;
        let config: VitConfig = serde_json::from_str(text)
            .map_err(|e| Error::format(st.path(), format!("invalid '{META_CONFIG}': {e}")))?;
        config
            .validate()
            .map_err(|e| Error::format(st.path(), e.to_string()))?;
        Ok(config)
    }

    /// A model of `config` whose every parameter is read from `st` (shape-checked).
    pub(crate) fn from_safetensors(st: &SafeTensors, config: VitConfig) -> Result<Vit> {
        let mut vit = Vit::build(config, None)?;
        vit.read_params(st)?;
        Ok(vit)
    }

    /// Overwrites every parameter with its tensor in `st`: each must be present, float,
    /// of this config's shape; any other tensor (but optimizer/trainer entries) is an error.
    pub(crate) fn read_params(&mut self, st: &SafeTensors) -> Result<()> {
        let ids: Vec<_> = self.params.ids().collect();
        for id in ids {
            let t = st.tensor_f32_checked(self.params.name(id), self.params.shape(id))?;
            self.params.values_mut(id).copy_from_slice(&t.f32s());
        }
        let unknown = st.names().into_iter().find(|name| {
            self.params.id(name).is_none()
                && !NON_MODEL_PREFIXES.iter().any(|p| name.starts_with(p))
        });
        if let Some(name) = unknown {
            return Err(Error::format(
                st.path(),
                format!("tensor '{name}' is not a parameter of this ViT config"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::gradcheck::{Tolerance, gradcheck};
    use crate::tensor::Tensor;

    /// 8x8 images of 4x4 patches: a 2x2 grid, small enough for a full gradcheck.
    fn micro(decoder_depth: usize) -> VitConfig {
        VitConfig {
            image_size: 8,
            patch: 4,
            width: 8,
            depth: 1,
            decoder_depth,
            heads: 2,
            mlp: 12,
            vocab: 5,
            input_dim: 0,
        }
    }

    fn images(c: &VitConfig, batch: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..batch * c.image_len())
            .map(|_| r.range(-1.0, 1.0))
            .collect()
    }

    fn tokens(c: &VitConfig, batch: usize, seed: u64) -> Vec<u32> {
        let mut r = Rng::new(seed);
        (0..batch * c.patches())
            .map(|_| r.below(c.vocab) as u32)
            .collect()
    }

    #[test]
    fn presets_and_validation() {
        let s = VitConfig::preset("small", 8192).unwrap();
        assert_eq!(
            (s.grid(), s.patches()),
            (super::super::GRID, super::super::PATCHES)
        );
        assert_eq!(
            (s.width, s.depth, s.decoder_depth, s.heads, s.mlp),
            (192, 6, 2, 3, 768)
        );
        let b = VitConfig::preset("base", 8192).unwrap();
        assert_eq!(
            (b.width, b.depth, b.decoder_depth, b.heads, b.mlp),
            (768, 12, 0, 12, 3072)
        );
        let e = VitConfig::preset("huge", 10).unwrap_err().to_string();
        assert!(e.contains("huge") && e.contains("tiny, small, base"), "{e}");
        let mut c = micro(0);
        c.heads = 3;
        assert!(c.validate().unwrap_err().to_string().contains("heads"));
        let mut c = micro(0);
        c.image_size = 10;
        assert!(c.validate().unwrap_err().to_string().contains("patch"));
        assert!(VitConfig::preset("tiny", 1).is_err(), "vocab of 1");
    }

    #[test]
    fn parameter_count_of_base_matches_vit_b() {
        // ViT-B/16 body: 85.8M without the classifier; our head is 768·V + V, no cls token.
        let c = VitConfig::preset("base", 8192).unwrap();
        let n: usize = c
            .param_specs()
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        let head = 768 * 8192 + 8192;
        let body = n - head;
        // patch 590,592 + mask 768 + pos 150,528 + 12·7,087,872 + final norm 1,536.
        assert_eq!(body, 590_592 + 768 + 150_528 + 12 * 7_087_872 + 1_536);
    }

    #[test]
    fn unfold_matches_conv_layout() {
        let c = micro(0);
        let img: Vec<f32> = (0..2 * c.image_len()).map(|i| i as f32).collect();
        let p = unfold(&img, &c);
        assert_eq!(p.len(), 2 * 4 * 48);
        // Image 1, patch (gy 1, gx 0), channel 2, row 3, column 1 of the patch.
        let (b, gy, gx, ch, ky, kx) = (1, 1, 0, 2, 3, 1);
        let row = b * 4 + gy * 2 + gx;
        let want = img[b * c.image_len() + ch * 64 + (gy * 4 + ky) * 8 + gx * 4 + kx];
        assert_eq!(p[row * 48 + (ch * 4 + ky) * 4 + kx], want);
    }

    #[test]
    fn forward_shapes_and_masked_rows() {
        let c = micro(1);
        let vit = Vit::new(c.clone(), 1).unwrap();
        let mask = [true, false, false, true, false, false, false, true];
        let t = Tape::no_grad();
        let out = vit.forward(&t, &images(&c, 2, 2), &mask).unwrap();
        assert_eq!(out.rows, vec![0, 3, 7]);
        assert_eq!(t.shape(out.logits), vec![3, 5]);
        // Wrong sizes are errors, not panics.
        assert!(vit.forward(&t, &images(&c, 2, 2)[1..], &mask).is_err());
        assert!(vit.forward(&t, &images(&c, 2, 2), &mask[1..]).is_err());
        let w = vit.bind(&t);
        assert!(
            vit.forward_with(&t, &w[1..], &images(&c, 2, 2), &mask)
                .is_err()
        );
    }

    #[test]
    fn output_ignores_pixels_of_masked_patches() {
        let c = micro(1);
        let vit = Vit::new(c.clone(), 3).unwrap();
        let mask = [false, true, false, true];
        let img = images(&c, 1, 4);
        let run = |img: &[f32]| {
            let t = Tape::no_grad();
            let o = vit.forward(&t, img, &mask).unwrap();
            t.to_vec(o.logits)
        };
        let base = run(&img);
        // Overwrite every pixel of masked patch 1 (gy 0, gx 1): output bit-identical.
        let mut changed = img.clone();
        for ch in 0..3 {
            for y in 0..4 {
                for x in 4..8 {
                    changed[ch * 64 + y * 8 + x] = 9.0;
                }
            }
        }
        assert_eq!(run(&changed), base);
        // A pixel of unmasked patch 0 does change it (the test can fail).
        let mut visible = img.clone();
        visible[0] += 1.0;
        assert_ne!(run(&visible), base);
    }

    #[test]
    fn feature_input_reads_one_vector_per_patch_and_ignores_masked_ones() {
        let c = VitConfig {
            input_dim: 6,
            ..micro(1)
        };
        assert_eq!((c.patch_dim(), c.image_len()), (6, 4 * 6));
        let vit = Vit::new(c.clone(), 3).unwrap();
        let mask = [true, false, false, true];
        let feats = images(&c, 2, 4);
        let run = |f: &[f32]| {
            let t = Tape::no_grad();
            let o = vit.forward(&t, f, &[mask, mask].concat()).unwrap();
            assert_eq!(t.shape(o.logits), vec![4, c.vocab]);
            t.to_vec(o.logits)
        };
        let base = run(&feats);
        let mut changed = feats.clone();
        changed[..6].iter_mut().for_each(|v| *v = 7.0); // image 0, masked patch 0
        assert_eq!(run(&changed), base);
        changed[6] += 1.0; // image 0, visible patch 1
        assert_ne!(run(&changed), base);
        // A pixel-sized input is a shape error, not a panic.
        let t = Tape::no_grad();
        assert!(vit.forward(&t, &images(&micro(1), 1, 1), &mask).is_err());
    }

    #[test]
    fn save_load_round_trip_is_bit_exact() {
        let dir = std::env::temp_dir().join(format!("pmad_vit_rt_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vit.safetensors");
        let vit = Vit::new(micro(1), 5).unwrap();
        vit.save(&path).unwrap();
        let back = Vit::load(&path).unwrap();
        assert_eq!(back.config(), vit.config());
        for id in vit.params().ids() {
            assert_eq!(back.params().name(id), vit.params().name(id));
            let (a, b) = (vit.params().values(id), back.params().values(id));
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert_eq!(back.params().decay(id), vit.params().decay(id));
        }
        // A file whose tensors do not fit its config: the error names file and tensor.
        let mut tensors = vit.params().to_tensors();
        tensors[0].1 = Tensor::zeros(&[3, 3]);
        write_safetensors(&path, tensors, Some(&vit.metadata().unwrap())).unwrap();
        let e = Vit::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("vit.safetensors") && e.contains("patch_embed.proj.weight"),
            "{e}"
        );
        // A tensor that is no parameter of the config.
        let mut tensors = vit.params().to_tensors();
        tensors.push(("blocks.7.extra".to_string(), Tensor::zeros(&[2])));
        write_safetensors(&path, tensors, Some(&vit.metadata().unwrap())).unwrap();
        let e = Vit::load(&path).unwrap_err().to_string();
        assert!(e.contains("blocks.7.extra"), "{e}");
        // No config in the metadata.
        write_safetensors(&path, vit.params().to_tensors(), None).unwrap();
        let e = Vit::load(&path).unwrap_err().to_string();
        assert!(e.contains("vit_config"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gradcheck_full_model_loss() {
        for decoder_depth in [0, 1] {
            let c = micro(decoder_depth);
            let vit = Vit::new(c.clone(), 7).unwrap();
            // Larger weights than the 0.02 init so gradients are O(0.1-1), well above atol.
            let mut r = Rng::new(8);
            let inputs: Vec<Tensor> = vit
                .params()
                .to_tensors()
                .into_iter()
                .map(|(name, t)| {
                    let base = if name.ends_with("norm1.weight")
                        || name.ends_with("norm2.weight")
                        || name.ends_with("norm.weight")
                    {
                        1.0
                    } else {
                        0.0
                    };
                    let v = (0..t.numel()).map(|_| base + r.range(-0.4, 0.4)).collect();
                    Tensor::new(v, t.shape()).unwrap()
                })
                .collect();
            let (img, tok) = (images(&c, 2, 9), tokens(&c, 2, 10));
            let mask = [true, false, true, true, false, true, false, false];
            let report = gradcheck(&inputs, Tolerance::new(1e-2, 2e-3, 2e-2), |t, w| {
                Ok(vit.loss_with(t, w, &img, &mask, &tok)?.0)
            })
            .unwrap();
            assert_eq!(report.checked, vit.params().num_values());
            report.assert_ok();
        }
    }

    #[test]
    fn entropy_and_cross_entropy_maps() {
        let c = micro(1);
        let vit = Vit::new(c.clone(), 11).unwrap();
        let img = images(&c, 3, 12);
        let tok = tokens(&c, 3, 13);
        let mask: Vec<bool> = (0..12).map(|i| i % 3 == 1).collect();
        let h = vit.token_entropy(&img, &mask).unwrap();
        let ce = vit.token_cross_entropy(&img, &mask, &tok).unwrap();
        assert_eq!((h.len(), ce.len()), (12, 12));
        let ln_v = (c.vocab as f32).ln();
        for i in 0..12 {
            if mask[i] {
                assert!(h[i] > 0.0 && h[i] <= ln_v + 1e-5, "{}", h[i]);
                assert!(ce[i] > 0.0);
            } else {
                assert_eq!((h[i], ce[i]), (0.0, 0.0));
            }
        }
        // The small-init model is nearly uniform: entropy close to ln |V|.
        assert!(h[1] > 0.95 * ln_v, "{}", h[1]);
        // Cross-entropy against the patch's own token equals -log softmax computed here.
        let t = Tape::no_grad();
        let o = vit.forward(&t, &img, &mask).unwrap();
        let l = t.to_vec(o.logits);
        let row = &l[..c.vocab];
        let lse = row.iter().map(|x| (*x as f64).exp()).sum::<f64>().ln();
        let want = lse - row[tok[o.rows[0]] as usize] as f64;
        assert!((ce[o.rows[0]] as f64 - want).abs() < 1e-5);
        // No masked patch: all zeros. A bad token id: an error.
        assert!(
            vit.token_entropy(&img, &[false; 12])
                .unwrap()
                .iter()
                .all(|&x| x == 0.0)
        );
        let mut bad = tok.clone();
        bad[1] = 99;
        assert!(vit.token_cross_entropy(&img, &mask, &bad).is_err());
    }
}
