//! Model pieces shared by the autograd tests, written against `pmad::autograd` only: a
//! pre-norm ViT block, a masked-token model around it, and a RealNVP affine coupling layer.
//! Weights are passed as `Var`s (in the order of the `*_shapes` lists) so the same code runs
//! with parameters bound from a `ParamStore` (training) or with gradcheck variables.
#![allow(dead_code)]

use pmad::Result;
use pmad::autograd::{ParamStore, Tape, Var};
use pmad::rng::Rng;
use pmad::tensor::Tensor;

pub const LN_EPS: f32 = 1e-6;

/// `n` values uniform in `[-scale, scale)`.
pub fn uniform(n: usize, scale: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.range(-scale, scale)).collect()
}

/// A tensor of `shape` with values uniform in `[-scale, scale)`.
pub fn rand_tensor(shape: &[usize], scale: f32, rng: &mut Rng) -> Tensor {
    Tensor::new(uniform(shape.iter().product(), scale, rng), shape).unwrap()
}

/// Initial values for a weight list described by `(name, shape)`: norm scales `*.g` start
/// at 1 (+ a little noise in gradchecks), biases/shifts small, matrices Xavier-like.
pub fn init_tensors(shapes: &[(String, Vec<usize>)], noise: f32, rng: &mut Rng) -> Vec<Tensor> {
    shapes
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if name.ends_with(".g") {
                (0..n).map(|_| 1.0 + rng.range(-noise, noise)).collect()
            } else if shape.len() == 1 {
                uniform(n, noise, rng)
            } else {
                let bound = (6.0 / (shape[0] + shape[1]) as f32).sqrt();
                uniform(n, bound, rng)
            };
            Tensor::new(v, shape).unwrap()
        })
        .collect()
}

/// Adds the weights described by `shapes` to `store` (decay off for vectors and for the
/// names listed in `no_decay`), returning their ids in order.
pub fn add_params(
    store: &mut ParamStore,
    shapes: &[(String, Vec<usize>)],
    rng: &mut Rng,
    no_decay: &[&str],
) {
    for ((name, shape), t) in shapes.iter().zip(init_tensors(shapes, 0.0, rng)) {
        let id = store.add(name, t.into_f32_vec(), shape).unwrap();
        if no_decay.contains(&name.as_str()) {
            store.set_decay(id, false);
        }
    }
}

/// Binds every parameter of `store`, in order.
pub fn bind_all(t: &Tape, store: &ParamStore) -> Vec<Var> {
    store.ids().map(|id| t.param_id(store, id)).collect()
}

fn named(prefix: &str, list: &[(&str, Vec<usize>)]) -> Vec<(String, Vec<usize>)> {
    list.iter()
        .map(|(n, s)| (format!("{prefix}.{n}"), s.clone()))
        .collect()
}

// ---------------------------------------------------------------- pre-norm ViT block

/// Weights of one block of width `d` and MLP width `hidden`, in the order `vit_block` reads.
pub fn block_shapes(prefix: &str, d: usize, hidden: usize) -> Vec<(String, Vec<usize>)> {
    named(
        prefix,
        &[
            ("ln1.g", vec![d]),
            ("ln1.b", vec![d]),
            ("qkv.w", vec![3 * d, d]),
            ("qkv.b", vec![3 * d]),
            ("proj.w", vec![d, d]),
            ("proj.b", vec![d]),
            ("ln2.g", vec![d]),
            ("ln2.b", vec![d]),
            ("fc1.w", vec![hidden, d]),
            ("fc1.b", vec![hidden]),
            ("fc2.w", vec![d, hidden]),
            ("fc2.b", vec![d]),
        ],
    )
}

/// `x + Attn(LN(x))`, then `+ MLP(LN(·))` with GELU; `x` is `[B, N, D]`, `w` the 12 weights.
pub fn vit_block(t: &Tape, w: &[Var], x: Var, heads: usize) -> Result<Var> {
    let h = t.layernorm(x, w[0], w[1], LN_EPS)?;
    let qkv = t.linear(h, w[2], Some(w[3]))?;
    let (q, k, v) = t.split_qkv(qkv)?;
    let a = t.attention(q, k, v, heads)?;
    let x = t.add(x, t.linear(a, w[4], Some(w[5]))?)?;
    let h = t.layernorm(x, w[6], w[7], LN_EPS)?;
    let h = t.gelu(t.linear(h, w[8], Some(w[9]))?);
    t.add(x, t.linear(h, w[10], Some(w[11]))?)
}

/// Sizes of the masked-token model: token embedding + mask token + position embedding,
/// one block, a final norm and a linear head over the vocabulary.
#[derive(Clone, Copy, Debug)]
pub struct MtmConfig {
    pub vocab: usize,
    pub tokens: usize,
    pub width: usize,
    pub hidden: usize,
    pub heads: usize,
}

pub fn mtm_shapes(c: MtmConfig) -> Vec<(String, Vec<usize>)> {
    let mut s = named(
        "embed",
        &[
            ("tok", vec![c.vocab, c.width]),
            ("mask", vec![c.width]),
            ("pos", vec![c.tokens, c.width]),
        ],
    );
    s.extend(block_shapes("blk0", c.width, c.hidden));
    s.extend(named(
        "head",
        &[
            ("ln.g", vec![c.width]),
            ("ln.b", vec![c.width]),
            ("w", vec![c.vocab, c.width]),
            ("b", vec![c.vocab]),
        ],
    ));
    s
}

/// Masked-token loss: embed `ids` (`[B*N]`), replace masked positions by the mask token, add
/// positions, one block, norm, head; mean cross-entropy over the masked rows only.
pub fn mtm_loss(t: &Tape, w: &[Var], c: MtmConfig, ids: &[usize], mask: &[bool]) -> Result<Var> {
    let batch = ids.len() / c.tokens;
    let x = t.embedding(w[0], ids)?;
    let x = t.mask_token_select(x, w[1], mask)?;
    let x = t.reshape(x, &[batch, c.tokens, c.width])?;
    let x = t.add(x, w[2])?; // [N, D] position embedding broadcast over the batch
    let x = vit_block(t, &w[3..15], x, c.heads)?;
    let x = t.layernorm(x, w[15], w[16], LN_EPS)?;
    let logits = t.linear(x, w[17], Some(w[18]))?;
    let rows: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
    t.cross_entropy_rows(logits, ids, &rows)
}

// ---------------------------------------------------------------- RealNVP coupling layer

pub const CLAMP_ALPHA: f32 = 1.9;

/// Subnet weights of a coupling layer on an even number `d` of features (halves `d/2`),
/// conditioned on `c` extra inputs, hidden width `hidden`: `[x_a, cond] -> tanh -> [s, t]`.
pub fn coupling_shapes(
    prefix: &str,
    d: usize,
    c: usize,
    hidden: usize,
) -> Vec<(String, Vec<usize>)> {
    let half = d / 2;
    named(
        prefix,
        &[
            ("fc1.w", vec![hidden, half + c]),
            ("fc1.b", vec![hidden]),
            ("fc2.w", vec![2 * half, hidden]),
            ("fc2.b", vec![2 * half]),
        ],
    )
}

/// One affine coupling layer on `x[R, d]`: the half `x_a` passes unchanged and, with `cond`,
/// feeds a subnet giving `s, t`; the other half becomes `x_b ⊙ exp(clamp(s)) + t`.
/// `swap` exchanges the roles of the halves. Returns `(y[R, d], logdet[R] = Σ clamp(s))`.
pub fn coupling(t: &Tape, w: &[Var], x: Var, cond: Var, swap: bool) -> Result<(Var, Var)> {
    let d = t.last_dim(x);
    assert!(
        d.is_multiple_of(2),
        "coupling needs an even number of features"
    );
    let half = d / 2;
    let (lo, hi) = (t.slice_cols(x, 0, half)?, t.slice_cols(x, half, d)?);
    let (pass, change) = if swap { (hi, lo) } else { (lo, hi) };
    let h = t.tanh(t.linear(t.concat_cols(&[pass, cond])?, w[0], Some(w[1]))?);
    let st = t.linear(h, w[2], Some(w[3]))?;
    let s = t.soft_clamp(t.slice_cols(st, 0, half)?, CLAMP_ALPHA);
    let shift = t.slice_cols(st, half, 2 * half)?;
    let changed = t.add(t.mul(change, t.exp(s))?, shift)?;
    let y = if swap {
        t.concat_cols(&[changed, pass])?
    } else {
        t.concat_cols(&[pass, changed])?
    };
    Ok((y, t.sum_rows(s)))
}

/// Mean negative log-likelihood per sample of a stack of coupling layers (layer `i` uses
/// `w[4i..4i+4]` and swaps on odd `i`): `(1/R) Σ_r (½|z_r|² - logdet_r) + (d/2)·log 2π`.
pub fn flow_nll(t: &Tape, w: &[Var], x: Var, cond: Var) -> Result<Var> {
    let shape = t.shape(x);
    let (rows, d) = (shape[0], shape[1]);
    let mut z = x;
    let mut logdets = Vec::new();
    for (i, lw) in w.chunks(4).enumerate() {
        let (y, ld) = coupling(t, lw, z, cond, i % 2 == 1)?;
        z = y;
        logdets.push(t.sum(ld));
    }
    let mut nll = t.scale(t.sumsq(z), 0.5);
    for ld in logdets {
        nll = t.sub(nll, ld)?;
    }
    let nll = t.scale(nll, 1.0 / rows as f32);
    Ok(t.add_scalar(nll, 0.5 * d as f32 * (2.0 * std::f32::consts::PI).ln()))
}
