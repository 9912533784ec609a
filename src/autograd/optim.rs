//! Optimisation: AdamW, the cosine learning-rate schedule with linear warm-up, and gradient
//! clipping by global norm — the recipe of the PMAD/MAE/BEiT training scripts.

use super::params::{ParamGrads, ParamId, ParamStore};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// AdamW (Loshchilov & Hutter) exactly as `torch.optim.AdamW` computes it. Per element, at
/// step `t` of a parameter with gradient `g`:
/// `p ← p - lr·λ·p` (decoupled weight decay, skipped where the store says `decay = false`),
/// `m ← β1·m + (1-β1)·g`, `v ← β2·v + (1-β2)·g²`,
/// `p ← p - lr · (m / (1-β1ᵗ)) / (sqrt(v / (1-β2ᵗ)) + eps)`.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `λ`, the decoupled weight decay.
    pub weight_decay: f32,
    /// Per parameter (by id): steps taken, first and second moments (empty until first use).
    state: Vec<Moments>,
}

#[derive(Clone, Debug, Default)]
struct Moments {
    step: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl AdamW {
    /// β1 = 0.9, β2 = 0.999, eps = 1e-8 and the given weight decay.
    pub fn new(weight_decay: f32) -> AdamW {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            state: Vec::new(),
        }
    }

    fn moments(&mut self, id: ParamId, n: usize) -> &mut Moments {
        if self.state.len() <= id.0 {
            self.state.resize_with(id.0 + 1, Moments::default);
        }
        let s = &mut self.state[id.0];
        if s.m.len() != n {
            *s = Moments {
                step: 0,
                m: vec![0.0; n],
                v: vec![0.0; n],
            };
        }
        s
    }

    /// Steps taken by parameter `id` (0 before its first update).
    pub fn steps(&self, id: ParamId) -> u64 {
        self.state.get(id.0).map_or(0, |s| s.step)
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, store: &mut ParamStore, grads: &ParamGrads, lr: f32) -> Result<()> {
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        for (id, g) in grads.iter() {
            if id.0 >= store.len() || g.len() != store.values(id).len() {
                return Err(Error::shape(format!(
                    "gradient {id:?} of {} values does not match the parameter store",
                    g.len()
                )));
            }
            let decay = if store.decay(id) { lr * wd } else { 0.0 };
            let s = self.moments(id, g.len());
            s.step += 1;
            let bc1 = 1.0 - b1.powi(s.step as i32);
            let bc2 = 1.0 - b2.powi(s.step as i32);
            let p = store.values_mut(id);
            for i in 0..g.len() {
                p[i] -= decay * p[i];
                s.m[i] = b1 * s.m[i] + (1.0 - b1) * g[i];
                s.v[i] = b2 * s.v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * (s.m[i] / bc1) / ((s.v[i] / bc2).sqrt() + eps);
            }
        }
        Ok(())
    }

    /// The optimizer state as named tensors, for a checkpoint: for every parameter `name`
    /// that has been updated, `adamw.{name}.exp_avg`, `adamw.{name}.exp_avg_sq` (f32, the
    /// parameter's shape) and `adamw.{name}.step` (i64, `[1]`). Hyper-parameters are config.
    pub fn state_to_tensors(&self, store: &ParamStore) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, s) in self.state.iter().enumerate() {
            if s.step == 0 || i >= store.len() {
                continue;
            }
            let (name, shape) = (store.name(ParamId(i)), store.shape(ParamId(i)));
            let t = |v: &Vec<f32>| Tensor::new(v.clone(), shape).expect("moments match shape");
            out.push((format!("adamw.{name}.exp_avg"), t(&s.m)));
            out.push((format!("adamw.{name}.exp_avg_sq"), t(&s.v)));
            let step = Tensor::from_bytes((s.step as i64).to_le_bytes().to_vec(), DType::I64, &[1])
                .expect("8 bytes hold one i64");
            out.push((format!("adamw.{name}.step"), step));
        }
        out
    }

    /// Restores the state written by [`Self::state_to_tensors`] for the parameters of
    /// `store` (entries for other names are an error; parameters without entries start fresh).
    pub fn load_state_tensors(
        &mut self,
        store: &ParamStore,
        tensors: &[(String, Tensor)],
    ) -> Result<()> {
        self.state.clear();
        for (key, t) in tensors {
            let rest = key.strip_prefix("adamw.");
            let split = rest.and_then(|r| r.rsplit_once('.'));
            let Some((name, field)) = split else {
                return Err(Error::invalid(format!(
                    "{key:?} is not an AdamW state entry"
                )));
            };
            let id = store.id(name).ok_or_else(|| {
                Error::invalid(format!("AdamW state for unknown parameter {name:?}"))
            })?;
            let n = store.values(id).len();
            let s = self.moments(id, n);
            let values = || -> Result<Vec<f32>> {
                if t.numel() != n {
                    return Err(Error::shape(format!(
                        "{key}: {:?} for {n} values",
                        t.shape()
                    )));
                }
                Ok(t.f32s().into_owned())
            };
            match field {
                "exp_avg" => s.m = values()?,
                "exp_avg_sq" => s.v = values()?,
                "step" => s.step = t.i64s().first().copied().unwrap_or(0).max(0) as u64,
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown AdamW state field in {key:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Learning rate at `step` (0-based): linear warm-up from 0 to `peak` over `warmup` steps,
/// then a half cosine from `peak` down to `final_lr` at `total`; `final_lr` afterwards.
/// `lr = peak·step/warmup` for `step < warmup`, else
/// `lr = final + (peak - final)·(1 + cos(π·(step - warmup)/(total - warmup)))/2`.
pub fn cosine_lr(step: usize, warmup: usize, total: usize, peak: f32, final_lr: f32) -> f32 {
    if step < warmup {
        return peak * step as f32 / warmup as f32;
    }
    if step >= total {
        return final_lr;
    }
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    (final_lr as f64 + (peak - final_lr) as f64 * cos) as f32
}

/// Scales all gradients together so their global L2 norm is at most `max_norm`
/// (`g ← g · max_norm / (‖g‖ + 1e-6)` when `‖g‖ > max_norm`, as PyTorch's
/// `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut ParamGrads, max_norm: f32) -> f32 {
    let sq: f64 = grads
        .iter()
        .flat_map(|(_, g)| g.iter())
        .map(|&x| x as f64 * x as f64)
        .sum();
    let norm = sq.sqrt() as f32;
    if norm > max_norm {
        let c = max_norm / (norm + 1e-6);
        for (_, g) in grads.iter_mut() {
            g.iter_mut().for_each(|x| *x *= c);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(w: Vec<f32>, b: Vec<f32>) -> ParamStore {
        let mut s = ParamStore::new();
        let n = w.len();
        s.add("w", w, &[1, n]).unwrap(); // matrix: decayed
        s.add("b", b.clone(), &[b.len()]).unwrap(); // vector: not decayed
        s
    }

    #[test]
    fn adamw_first_steps_match_hand_computation() {
        let mut s = store_with(vec![1.0, -2.0], vec![0.5]);
        let (w, b) = (s.id("w").unwrap(), s.id("b").unwrap());
        let mut g = ParamGrads::default();
        g.set(w, vec![0.1, -0.4]);
        g.set(b, vec![2.0]);
        let mut opt = AdamW::new(0.1);
        let lr = 0.01f32;
        opt.step(&mut s, &g, lr).unwrap();
        // Step 1: m̂ = g, v̂ = g², so the Adam step is lr·g/(|g| + eps) ≈ lr·sign(g);
        // decay multiplies the weight (not the bias) by 1 - lr·λ first.
        let want_w = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (got, want) in s.values(w).iter().zip(want_w) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert!((s.values(b)[0] - (0.5 - 0.01)).abs() < 1e-6);
        // Step 2 with gradient g2 for w[0]: m = 0.9·0.1·... computed in f64 by hand.
        g.set(w, vec![0.3, -0.4]);
        let p0 = s.values(w)[0] as f64;
        opt.step(&mut s, &g, lr).unwrap();
        let m = 0.9 * (0.1 * 0.1) + 0.1 * 0.3; // β1·m1 + (1-β1)·g2, m1 = 0.1·g1
        let v = 0.999 * (0.001 * 0.01) + 0.001 * 0.09; // β2·v1 + (1-β2)·g2², v1 = 0.001·g1²
        let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999f64.powi(2)));
        let want = p0 * (1.0 - 0.001) - 0.01 * mh / (vh.sqrt() + 1e-8);
        assert!(
            (s.values(w)[0] as f64 - want).abs() < 1e-6,
            "{} vs {want}",
            s.values(w)[0]
        );
        assert_eq!(opt.steps(w), 2);
    }

    #[test]
    fn adamw_skips_missing_grads_and_checks_sizes() {
        let mut s = store_with(vec![1.0, 1.0], vec![1.0]);
        let (w, b) = (s.id("w").unwrap(), s.id("b").unwrap());
        let mut g = ParamGrads::default();
        g.set(b, vec![1.0]);
        let mut opt = AdamW::new(0.5);
        opt.step(&mut s, &g, 0.1).unwrap();
        assert_eq!(s.values(w), &[1.0, 1.0], "no gradient: no update, no decay");
        assert_eq!(opt.steps(w), 0);
        g.set(w, vec![1.0]);
        assert!(opt.step(&mut s, &g, 0.1).is_err());
    }

    #[test]
    fn adamw_state_round_trip_resumes_identically() {
        let mut s = store_with(vec![0.3, -0.7, 1.1], vec![0.2, 0.4]);
        let (w, b) = (s.id("w").unwrap(), s.id("b").unwrap());
        let grads = |k: f32| {
            let mut g = ParamGrads::default();
            g.set(w, vec![0.1 * k, -0.2, 0.3 / k]);
            g.set(b, vec![k, -k]);
            g
        };
        let mut opt = AdamW::new(0.05);
        for k in 1..4 {
            opt.step(&mut s, &grads(k as f32), 0.01).unwrap();
        }
        let saved = opt.state_to_tensors(&s);
        assert_eq!(saved.len(), 6);
        let mut resumed = AdamW::new(0.05);
        resumed.load_state_tensors(&s, &saved).unwrap();
        let mut s2 = s.clone();
        opt.step(&mut s, &grads(5.0), 0.01).unwrap();
        resumed.step(&mut s2, &grads(5.0), 0.01).unwrap();
        assert_eq!(s.values(w), s2.values(w));
        assert_eq!(s.values(b), s2.values(b));
        assert_eq!(resumed.steps(w), 4);
        let bad = vec![("adamw.nope.step".to_string(), saved[2].1.clone())];
        assert!(resumed.load_state_tensors(&s, &bad).is_err());
    }

    #[test]
    fn cosine_schedule_values() {
        let (warm, total, peak, fin) = (10, 110, 1e-3f32, 1e-5f32);
        assert_eq!(cosine_lr(0, warm, total, peak, fin), 0.0);
        assert!((cosine_lr(5, warm, total, peak, fin) - 5e-4).abs() < 1e-9);
        assert!((cosine_lr(10, warm, total, peak, fin) - peak).abs() < 1e-9);
        let mid = cosine_lr(60, warm, total, peak, fin);
        assert!((mid - (peak + fin) / 2.0).abs() < 1e-8, "{mid}");
        assert!((cosine_lr(110, warm, total, peak, fin) - fin).abs() < 1e-9);
        assert_eq!(cosine_lr(500, warm, total, peak, fin), fin);
        // Monotone decay after warm-up.
        let lrs: Vec<f32> = (10..=110)
            .map(|s| cosine_lr(s, warm, total, peak, fin))
            .collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = ParamGrads::default();
        g.set(ParamId(0), vec![3.0, 0.0]);
        g.set(ParamId(2), vec![4.0]);
        let norm = clip_grad_norm(&mut g, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((g.get(ParamId(0)).unwrap()[0] - 0.6).abs() < 1e-6);
        assert!((g.get(ParamId(2)).unwrap()[0] - 0.8).abs() < 1e-6);
        assert!(
            (clip_grad_norm(&mut g, 10.0) - 1.0).abs() < 1e-5,
            "below max: unchanged"
        );
        assert!((g.get(ParamId(2)).unwrap()[0] - 0.8).abs() < 1e-6);
    }
}
