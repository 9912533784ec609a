//! ProtoFlow (METHOD.md §3): a normalizing flow over residuals `r = f - nearest prototype`,
//! conditioned on the patch position, trained by maximum likelihood on normal patches.
//!
//! Structure (RealNVP / FrEIA "all-in-one" style), for `D`-dim residuals:
//! 1. fixed standardisation `x = (r - μ) / σ` (μ, σ from the training residuals),
//!    `log|det| = -Σ log σ`;
//! 2. `blocks` times: a fixed random rotation `x ← Q x` (orthogonal, `log|det| = 0`, mixes
//!    all dimensions between couplings), then an affine coupling: split `x = (x₁, x₂)`,
//!    `[s, t] = MLP([x₁, c])` with `c` the 2-D sin/cos positional encoding,
//!    `s ← (2α/π)·atan(s/α)` (soft clamp, α = 1.9), `x₂ ← x₂ ⊙ exp(s) + t`,
//!    `log|det| += Σ s`.
//!
//! Log-likelihood `ll(r) = -½|z|² + log|det J| - (D/2) log 2π`. Scores use the per-dimension
//! value `ll/D`, which stays in a range where `exp` is finite.

use crate::autograd::{AdamW, ParamStore, Tape, Var, clip_grad_norm, cosine_lr};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Flow hyper-parameters (saved in `model.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowConfig {
    pub dim: usize,
    pub blocks: usize,
    pub hidden: usize,
    /// Width of the positional encoding (multiple of 4).
    pub cond_dim: usize,
    pub clamp_alpha: f32,
    pub seed: u64,
}

impl FlowConfig {
    pub fn new(dim: usize) -> FlowConfig {
        FlowConfig {
            dim,
            blocks: 4,
            hidden: 256,
            cond_dim: 64,
            clamp_alpha: 1.9,
            seed: 0,
        }
    }
}

/// How to train.
#[derive(Clone, Debug)]
pub struct FlowTrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub clip: f32,
    pub seed: u64,
}

impl Default for FlowTrainConfig {
    fn default() -> Self {
        FlowTrainConfig {
            epochs: 4,
            batch: 256,
            lr: 1e-3,
            weight_decay: 1e-4,
            clip: 5.0,
            seed: 0,
        }
    }
}

/// 2-D sin/cos encoding of every position of a `grid x grid` map: `[grid², cond_dim]`.
/// Half the channels encode the row, half the column, each as sin/cos pairs of geometric
/// frequencies (as in transformers).
pub fn positional_encoding(grid: usize, cond_dim: usize) -> Vec<f32> {
    let quarter = cond_dim / 4;
    let mut out = vec![0.0; grid * grid * cond_dim];
    for y in 0..grid {
        for x in 0..grid {
            let row = &mut out[(y * grid + x) * cond_dim..][..cond_dim];
            for k in 0..quarter {
                let freq = 1.0 / 10000f32.powf(k as f32 / quarter as f32);
                let (py, px) = (y as f32 * freq, x as f32 * freq);
                row[k] = py.sin();
                row[quarter + k] = py.cos();
                row[2 * quarter + k] = px.sin();
                row[3 * quarter + k] = px.cos();
            }
        }
    }
    out
}

/// A random orthogonal `d x d` matrix (Gram–Schmidt on Gaussian rows).
fn random_rotation(d: usize, rng: &mut Rng) -> Vec<f32> {
    let mut q: Vec<f64> = (0..d * d).map(|_| rng.normal() as f64).collect();
    for i in 0..d {
        for j in 0..i {
            let dot: f64 = (0..d).map(|k| q[i * d + k] * q[j * d + k]).sum();
            for k in 0..d {
                q[i * d + k] -= dot * q[j * d + k];
            }
        }
        let n = (0..d)
            .map(|k| q[i * d + k] * q[i * d + k])
            .sum::<f64>()
            .sqrt();
        for k in 0..d {
            q[i * d + k] /= n;
        }
    }
    q.into_iter().map(|v| v as f32).collect()
}

/// The element-wise part of one affine coupling: the soft clamp
/// `s = (2α/π)·atan(s_raw/α)`, `y₂ = x₂ ⊙ exp(s) + shift` and the per-row log-determinant
/// `Σ s`; returns `(y₂, logdet)`. `x2`, `s_raw` and `shift` are `[n, D₂]`, `logdet` is `[n]`.
/// (The CPU twin of `kernels/coupling.cu`, whose launchers `tests/cuda_parity.rs` checks
/// against this, forward and backward.)
pub fn affine_coupling(
    t: &Tape,
    x2: Var,
    s_raw: Var,
    shift: Var,
    alpha: f32,
) -> Result<(Var, Var)> {
    let s = t.soft_clamp(s_raw, alpha);
    let y2 = t.add(t.mul(x2, t.exp(s))?, shift)?;
    Ok((y2, t.sum_rows(s)))
}

/// A trained (or initialised) flow.
pub struct ProtoFlow {
    pub config: FlowConfig,
    pub params: ParamStore,
    /// Standardisation of the input residuals.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// One fixed rotation per block, `[D, D]` row-major (applied as `x Qᵀ`).
    pub rotations: Vec<Vec<f32>>,
}

impl ProtoFlow {
    /// A fresh flow; the last layer of each coupling MLP starts at zero so the flow starts as
    /// the identity (stable early training).
    pub fn new(config: FlowConfig) -> Result<ProtoFlow> {
        let d = config.dim;
        let problem = if d < 2 {
            Some(format!("dim {d} must be at least 2"))
        } else if !config.cond_dim.is_multiple_of(4) {
            Some(format!(
                "cond_dim {} is not a multiple of 4",
                config.cond_dim
            ))
        } else if config.blocks == 0 || config.hidden == 0 {
            Some("blocks and hidden must be at least 1 (e.g. --flow-blocks 4)".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(Error::invalid(format!("flow config: {p}")));
        }
        let mut rng = Rng::new(config.seed);
        let mut params = ParamStore::new();
        let (d1, d2) = (d / 2, d - d / 2);
        for b in 0..config.blocks {
            params.add_linear(
                &format!("block{b}.fc1"),
                d1 + config.cond_dim,
                config.hidden,
                &mut rng,
            )?;
            params.add_linear(&format!("block{b}.fc2"), config.hidden, 2 * d2, &mut rng)?;
            let w = params
                .id(&format!("block{b}.fc2.weight"))
                .expect("just added");
            params.values_mut(w).fill(0.0);
        }
        let rotations = (0..config.blocks)
            .map(|_| random_rotation(d, &mut rng))
            .collect();
        Ok(ProtoFlow {
            params,
            mean: vec![0.0; d],
            std: vec![1.0; d],
            rotations,
            config,
        })
    }

    /// Log-likelihood per dimension `ll/D` of residual rows `r [n, D]` with conditions
    /// `cond [n, cond_dim]`, built on `t` (so the same code trains and scores).
    fn ll_per_dim(&self, t: &Tape, r: &[f32], cond: &[f32], n: usize) -> Result<Var> {
        let c = &self.config;
        let d = c.dim;
        let (d1, d2) = (d / 2, d - d / 2);
        let mut z = vec![0.0; n * d];
        for (row_z, row_r) in z.chunks_mut(d).zip(r.chunks(d)) {
            for k in 0..d {
                row_z[k] = (row_r[k] - self.mean[k]) / self.std[k];
            }
        }
        let mut x = t.constant(z, &[n, d])?;
        let cond = t.constant(cond.to_vec(), &[n, c.cond_dim])?;
        let mut logdet: Option<Var> = None;
        for b in 0..c.blocks {
            let rot = t.constant(self.rotations[b].clone(), &[d, d])?;
            x = t.linear(x, rot, None)?;
            let x1 = t.slice_cols(x, 0, d1)?;
            let x2 = t.slice_cols(x, d1, d)?;
            let p = |n: &str| t.param(&self.params, &format!("block{b}.{n}"));
            let h = t.relu(t.linear(
                t.concat_cols(&[x1, cond])?,
                p("fc1.weight")?,
                Some(p("fc1.bias")?),
            )?);
            let st = t.linear(h, p("fc2.weight")?, Some(p("fc2.bias")?))?;
            let (s_raw, shift) = (t.slice_cols(st, 0, d2)?, t.slice_cols(st, d2, 2 * d2)?);
            let (y2, ls) = affine_coupling(t, x2, s_raw, shift, c.clamp_alpha)?;
            x = t.concat_cols(&[x1, y2])?;
            logdet = Some(match logdet {
                Some(l) => t.add(l, ls)?,
                None => ls,
            });
        }
        // ll = -½|z|² + Σ s - Σ log σ - (D/2) log 2π, per row; then / D.
        let const_term = -self.std.iter().map(|s| s.ln()).sum::<f32>()
            - 0.5 * d as f32 * (2.0 * std::f32::consts::PI).ln();
        let half_sq = t.scale(t.sum_rows(t.square(x)), -0.5);
        let ll = t.add_scalar(t.add(half_sq, logdet.expect("blocks > 0"))?, const_term);
        Ok(t.scale(ll, 1.0 / d as f32))
    }

    /// Per-dimension log-likelihoods of residual rows (inference).
    pub fn log_likelihood(&self, r: &[f32], cond: &[f32]) -> Result<Vec<f32>> {
        let n = r.len() / self.config.dim;
        let t = Tape::new();
        let v = self.ll_per_dim(&t, r, cond, n)?;
        Ok(t.to_vec(v))
    }

    /// Maximum-likelihood training on residual rows `r [n, D]` with conditions `cond [n, C]`.
    /// Returns the mean negative log-likelihood per dimension of each epoch.
    pub fn fit(
        &mut self,
        r: &[f32],
        cond: &[f32],
        cfg: &FlowTrainConfig,
        progress: &dyn Fn(usize, usize, f32),
    ) -> Result<Vec<f32>> {
        let (d, c) = (self.config.dim, self.config.cond_dim);
        let n = r.len() / d;
        if n < 2 || cond.len() != n * c {
            return Err(Error::invalid(format!(
                "flow training needs >= 2 residuals with conditions, got {n}"
            )));
        }
        // Standardisation constants from the training residuals.
        for k in 0..d {
            let m = r.iter().skip(k).step_by(d).sum::<f32>() / n as f32;
            let v = r
                .iter()
                .skip(k)
                .step_by(d)
                .map(|x| (x - m) * (x - m))
                .sum::<f32>()
                / n as f32;
            self.mean[k] = m;
            self.std[k] = v.sqrt().max(1e-4);
        }
        let mut rng = Rng::new(cfg.seed);
        let mut opt = AdamW::new(cfg.weight_decay);
        let steps_per_epoch = n.div_ceil(cfg.batch);
        let total = steps_per_epoch * cfg.epochs;
        let warmup = (total / 20).max(1);
        let mut order: Vec<usize> = (0..n).collect();
        let mut history = Vec::new();
        let mut step = 0;
        for _epoch in 0..cfg.epochs {
            rng.shuffle(&mut order);
            let mut sum = 0.0f64;
            for chunk in order.chunks(cfg.batch) {
                let mut br = Vec::with_capacity(chunk.len() * d);
                let mut bc = Vec::with_capacity(chunk.len() * c);
                for &i in chunk {
                    br.extend_from_slice(&r[i * d..(i + 1) * d]);
                    bc.extend_from_slice(&cond[i * c..(i + 1) * c]);
                }
                let t = Tape::new();
                let ll = self.ll_per_dim(&t, &br, &bc, chunk.len())?;
                let loss = t.scale(t.mean(ll), -1.0);
                let value = t.scalar(loss);
                if !value.is_finite() {
                    return Err(Error::invalid(format!(
                        "flow training diverged at step {step} (loss {value})"
                    )));
                }
                sum += value as f64 * chunk.len() as f64;
                let mut grads = t.backward(loss)?.into_params();
                clip_grad_norm(&mut grads, cfg.clip);
                opt.step(
                    &mut self.params,
                    &grads,
                    cosine_lr(step, warmup, total, cfg.lr, cfg.lr * 0.01),
                )?;
                step += 1;
                progress(step, total, value);
            }
            history.push((sum / n as f64) as f32);
        }
        Ok(history)
    }

    /// All tensors to save (parameters, standardisation, rotations).
    pub fn to_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let d = self.config.dim;
        let mut v = self.params.to_tensors();
        v.push(("norm.mean".into(), Tensor::new(self.mean.clone(), &[d])?));
        v.push(("norm.std".into(), Tensor::new(self.std.clone(), &[d])?));
        for (b, q) in self.rotations.iter().enumerate() {
            v.push((format!("rotation{b}"), Tensor::new(q.clone(), &[d, d])?));
        }
        Ok(v)
    }

    /// Rebuilds a flow from `config` and saved tensors (`get(name, shape)`).
    pub fn from_tensors(
        config: FlowConfig,
        get: impl Fn(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<ProtoFlow> {
        let mut flow = ProtoFlow::new(config)?;
        let d = flow.config.dim;
        let names: Vec<(String, Vec<usize>)> = flow
            .params
            .ids()
            .map(|id| {
                (
                    flow.params.name(id).to_string(),
                    flow.params.shape(id).to_vec(),
                )
            })
            .collect();
        let mut loaded = Vec::new();
        for (name, shape) in names {
            loaded.push((name.clone(), get(&name, &shape)?));
        }
        flow.params.load_tensors(&loaded)?;
        flow.mean = get("norm.mean", &[d])?.into_f32_vec();
        flow.std = get("norm.std", &[d])?.into_f32_vec();
        for b in 0..flow.config.blocks {
            flow.rotations[b] = get(&format!("rotation{b}"), &[d, d])?.into_f32_vec();
        }
        Ok(flow)
    }
}

/// Eq. 1 in log space: `a_i = exp(L) - exp(l_i)` with `l_i` the per-dimension log-likelihood
/// and `L` the reference level (the image's own max for the literal eq. 1). Finite for any
/// finite inputs because `l` is per dimension and clamped.
pub fn abnormality_from_ll(ll: &[f32], reference: f32) -> Vec<f32> {
    const CAP: f32 = 30.0; // exp(30) ~ 1e13: far above any per-dimension density seen
    let r = reference.min(CAP);
    let top = r.exp();
    ll.iter()
        .map(|&l| (top - l.min(CAP).exp()).max(0.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_orthogonal_and_fresh_flow_is_standard_normal() {
        let mut rng = Rng::new(1);
        let q = random_rotation(6, &mut rng);
        for i in 0..6 {
            for j in 0..6 {
                let dot: f32 = (0..6).map(|k| q[i * 6 + k] * q[j * 6 + k]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
        let flow = ProtoFlow::new(FlowConfig {
            dim: 6,
            blocks: 2,
            hidden: 8,
            cond_dim: 4,
            clamp_alpha: 1.9,
            seed: 0,
        })
        .unwrap();
        let r = vec![0.0; 6];
        let ll = flow.log_likelihood(&r, &[0.0; 4]).unwrap();
        // Identity flow at the origin: ll/D = -½ log 2π.
        assert!((ll[0] + 0.5 * (2.0 * std::f32::consts::PI).ln()).abs() < 1e-5);
    }

    #[test]
    fn training_raises_likelihood_of_a_shifted_scaled_gaussian() {
        let mut rng = Rng::new(2);
        let (d, n) = (4, 2000);
        let r: Vec<f32> = (0..n * d)
            .map(|i| rng.normal() * (1.0 + (i % d) as f32) * 0.1 + 0.3)
            .collect();
        let cond = vec![0.0; n * 4];
        let mut flow = ProtoFlow::new(FlowConfig {
            dim: d,
            blocks: 2,
            hidden: 16,
            cond_dim: 4,
            clamp_alpha: 1.9,
            seed: 0,
        })
        .unwrap();
        let hist = flow
            .fit(
                &r,
                &cond,
                &FlowTrainConfig {
                    epochs: 3,
                    batch: 128,
                    ..Default::default()
                },
                &|_, _, _| {},
            )
            .unwrap();
        assert!(hist.last().unwrap() < &hist[0], "{hist:?}");
        // An outlier is less likely than a typical point.
        let ll = flow
            .log_likelihood(&[0.3, 0.3, 0.3, 0.3, 3.0, -3.0, 3.0, -3.0], &[0.0; 8])
            .unwrap();
        assert!(ll[0] > ll[1] + 1.0, "{ll:?}");
        let a = abnormality_from_ll(&ll, ll[0]);
        assert!(a[0] == 0.0 && a[1] > 0.0);
    }
}
