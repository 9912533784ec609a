//! Masked-token training of the ViT with checkpoints and exact resume (METHOD.md, "Training
//! the reconstruction model").
//!
//! Objective: cross-entropy of the predicted visual-token distribution against each masked
//! patch's token id, masked patches only. Optimiser: AdamW (β 0.9/0.999, decoupled weight
//! decay off for biases, norms and embeddings), a per-step cosine schedule with linear warm-up,
//! gradient clipping by global norm. The paper's values (ViT-B, GPU) are in
//! [`TrainConfig::paper`]; [`TrainConfig::default`] is sized for a CPU.
//!
//! Determinism, which exact resume rests on: nothing random is carried from step to step.
//! The sample order of epoch `e` is a shuffle seeded by `(seed, e)`; the mask of the `j`-th
//! sample of step `s` is drawn by the [`MaskSource`] from an [`Rng`] seeded by `(seed, s, j)`.
//! So a checkpoint needs only the model, the AdamW moments, the step counter and the
//! MaskSource's own state (e.g. dynamic masking's running per-patch loss). A resumed run then
//! performs exactly the arithmetic of an uninterrupted one, and its final weights are
//! bit-identical (same machine and thread count: the batch runs as one tape whose ops are
//! deterministic for a given thread count).
//!
//! A checkpoint is one safetensors file, replaced atomically (temp file + rename), so a crash
//! mid-write leaves the previous checkpoint intact: model parameters under their own names,
//! `adamw.*` optimizer state, `train.mask_state`, and in the metadata the step, both configs
//! and a fingerprint of the training data. Resuming with a different model config, training
//! config or data is refused with a message naming the file and what differs.

use super::MaskSource;
use super::vit::Vit;
use crate::autograd::{AdamW, Tape, clip_grad_norm, cosine_lr};
use crate::error::{Error, Result};
use crate::ops::softmax::logsumexp;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::weights::{SafeTensors, write_safetensors};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// `__metadata__` keys of a checkpoint (besides the model's own).
const META_KIND: &str = "checkpoint";
const KIND_NAME: &str = "pmad-recon-train";
const META_STEP: &str = "train_step";
const META_TRAIN: &str = "train_config";
const META_DATA: &str = "train_data";
const MASK_STATE: &str = "train.mask_state";

/// Domain tags that keep the shuffle and mask random streams apart.
const TAG_SHUFFLE: u64 = 0x5348_5546;
const TAG_MASK: u64 = 0x4d41_534b;

/// Hyper-parameters of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Images per step (the last step of an epoch takes the remainder).
    pub batch_size: usize,
    /// Learning rate after warm-up.
    pub peak_lr: f32,
    /// Learning rate at the end of the cosine decay.
    pub final_lr: f32,
    /// Linear warm-up length in epochs (fractions allowed; rounded to whole steps).
    pub warmup_epochs: f32,
    /// AdamW's decoupled weight decay λ.
    pub weight_decay: f32,
    /// Maximum global gradient norm.
    pub clip_norm: f32,
    /// Write the checkpoint every this many steps (0: only at the end of each epoch). It is
    /// also written at the end of every epoch and when training stops. Free to change on
    /// resume.
    pub checkpoint_every: usize,
    /// Seeds the per-epoch shuffles and the per-step mask draws.
    pub seed: u64,
    /// Stop (checkpoint written) once this many steps in total are done — an interruption
    /// on purpose, e.g. for tests; `None` runs to the end. Free to change on resume.
    #[serde(default)]
    pub stop_after_steps: Option<usize>,
}

impl Default for TrainConfig {
    /// CPU-sized: 20 epochs of batch 8, peak lr 1.5e-3 (the paper's) cosine to 1e-5 after one
    /// warm-up epoch, weight decay 0.05, clip 3.0 — the paper's recipe with fewer epochs and
    /// a short warm-up, for a few hundred images on a small ViT.
    fn default() -> TrainConfig {
        TrainConfig {
            epochs: 20,
            batch_size: 8,
            peak_lr: 1.5e-3,
            final_lr: 1e-5,
            warmup_epochs: 1.0,
            weight_decay: 0.05,
            clip_norm: 3.0,
            checkpoint_every: 0,
            seed: 0,
            stop_after_steps: None,
        }
    }
}

impl TrainConfig {
    /// The paper's values (ViT-B on a GPU): 300 epochs, batch 4, AdamW (0.9, 0.999), peak lr
    /// 1.5e-3 cosine to 1e-5, 10 warm-up epochs, clip 3.0, weight decay 0.05.
    pub fn paper() -> TrainConfig {
        TrainConfig {
            epochs: 300,
            batch_size: 4,
            warmup_epochs: 10.0,
            ..TrainConfig::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::invalid(format!("train config: {msg}")));
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("epochs and batch_size must be at least 1");
        }
        let finite = [
            self.peak_lr,
            self.final_lr,
            self.warmup_epochs,
            self.weight_decay,
            self.clip_norm,
        ];
        if finite.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return bad(
                "learning rates, warmup_epochs, weight_decay and clip_norm must be finite and >= 0",
            );
        }
        if self.clip_norm == 0.0 {
            return bad("clip_norm must be positive");
        }
        Ok(())
    }

    /// The fields that determine the arithmetic of a run (all but `checkpoint_every` and
    /// `stop_after_steps`), as JSON: what a resumed run must agree on.
    fn schedule_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a TrainConfig is plain data");
        if let Some(o) = v.as_object_mut() {
            o.remove("checkpoint_every");
            o.remove("stop_after_steps");
        }
        v
    }
}

/// One training image with its target token ids.
#[derive(Clone, Debug)]
pub struct TrainSample {
    /// `[3, S, S]` normalised CHW pixels.
    pub image: Vec<f32>,
    /// `[N]` token ids on the ViT grid, row-major.
    pub tokens: Vec<u32>,
}

/// What the progress callback receives after every step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// 0-based epoch of the step.
    pub epoch: usize,
    /// Steps completed so far, counting this one (1-based).
    pub step: usize,
    pub total_steps: usize,
    /// Mean cross-entropy over the masked patches of the batch.
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Images in the batch / wall time of the step.
    pub images_per_sec: f32,
    /// Whether a checkpoint was written after this step.
    pub checkpointed: bool,
}

/// Summary of a call to [`train`].
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Step the call started from (non-zero after a resume).
    pub start_step: usize,
    /// Steps completed when it returned.
    pub end_step: usize,
    pub total_steps: usize,
    /// Loss of every step run by this call.
    pub losses: Vec<f32>,
    /// Images per second over this call's steps.
    pub images_per_sec: f32,
}

impl TrainReport {
    /// Whether the run reached the end of its schedule.
    pub fn finished(&self) -> bool {
        self.end_step == self.total_steps
    }
}

/// The step arithmetic of a run over `n` samples.
struct Schedule {
    steps_per_epoch: usize,
    total: usize,
    warmup: usize,
}

impl Schedule {
    fn new(cfg: &TrainConfig, n: usize) -> Schedule {
        let steps_per_epoch = n.div_ceil(cfg.batch_size);
        let total = cfg.epochs * steps_per_epoch;
        // Warm-up in whole steps; `cosine_lr` ramps linearly from 0 over them (so the first
        // step has lr 0, as in MAE/BEiT's per-iteration schedule).
        let warmup =
            ((cfg.warmup_epochs as f64 * steps_per_epoch as f64).round() as usize).min(total);
        Schedule {
            steps_per_epoch,
            total,
            warmup,
        }
    }
}

/// A seed made of `seed` and `parts` (SplitMix64 finaliser after each part), so streams
/// for different (purpose, step, position) never coincide in practice.
fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    parts.iter().fold(mix(seed), |h, &p| {
        mix(h ^ p.wrapping_add(0x9E37_79B9_7F4A_7C15))
    })
}

/// The sample order of `epoch`.
fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(derive_seed(seed, &[TAG_SHUFFLE, epoch as u64])).shuffle(&mut order);
    order
}

/// A 64-bit FNV-1a fingerprint of the data (sample count, pixels' bits, token ids), so a
/// resume on different data is refused.
fn data_fingerprint(data: &[TrainSample]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        h ^= x;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(data.len() as u64);
    for s in data {
        s.image.iter().for_each(|v| eat(v.to_bits() as u64));
        s.tokens.iter().for_each(|&t| eat(t as u64 | 1 << 40));
    }
    format!("{} samples, fnv1a {h:016x}", data.len())
}

/// Checks every sample against the model.
fn check_data(vit: &Vit, data: &[TrainSample]) -> Result<()> {
    let c = vit.config();
    if data.is_empty() {
        return Err(Error::invalid("training needs at least one sample"));
    }
    for (i, s) in data.iter().enumerate() {
        if s.image.len() != c.image_len() {
            return Err(Error::shape(format!(
                "training sample {i}: {} pixel values, the model takes [3, {n}, {n}] = {}",
                s.image.len(),
                c.image_len(),
                n = c.image_size
            )));
        }
        if s.tokens.len() != c.patches() {
            return Err(Error::shape(format!(
                "training sample {i}: {} token ids for {} patches",
                s.tokens.len(),
                c.patches()
            )));
        }
        if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::invalid(format!(
                "training sample {i}: token id {t} is outside the vocabulary of {}",
                c.vocab
            )));
        }
    }
    Ok(())
}

/// Trains `vit` on `data` (masked-token cross-entropy), drawing each sample's mask from
/// `masks` and reporting each masked patch's loss back to it.
///
/// With `checkpoint = Some(path)` the state is written there every
/// `cfg.checkpoint_every` steps, at the end of every epoch and when the call returns; with
/// `resume` the run continues from that file (which must exist and match `vit`'s config,
/// `cfg` and `data`), overwriting `vit`'s parameters and `masks`' state. `progress` is called
/// after every step.
pub fn train(
    vit: &mut Vit,
    data: &[TrainSample],
    masks: &mut dyn MaskSource,
    cfg: &TrainConfig,
    checkpoint: Option<&Path>,
    resume: bool,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<TrainReport> {
    cfg.validate()?;
    check_data(vit, data)?;
    let sched = Schedule::new(cfg, data.len());
    let fingerprint = data_fingerprint(data);
    let mut opt = AdamW::new(cfg.weight_decay);
    let start = if resume {
        let path = checkpoint
            .ok_or_else(|| Error::invalid("resume asked for, but no checkpoint path given"))?;
        load_checkpoint(path, vit, &mut opt, masks, cfg, &fingerprint)?
    } else {
        0
    };
    let end = cfg.stop_after_steps.unwrap_or(sched.total).min(sched.total);
    let (n, len) = (vit.config().patches(), vit.config().image_len());
    let started = Instant::now();
    let mut losses = Vec::new();
    let mut images_seen = 0usize;
    let mut order = Vec::new();
    for step in start..end {
        let t0 = Instant::now();
        let (epoch, k) = (step / sched.steps_per_epoch, step % sched.steps_per_epoch);
        if k == 0 || order.is_empty() {
            order = epoch_order(cfg.seed, epoch, data.len());
        }
        let batch = &order[k * cfg.batch_size..((k + 1) * cfg.batch_size).min(data.len())];
        // Inputs of the step: pixels, token ids, and one mask per sample from its own stream.
        let mut images = Vec::with_capacity(batch.len() * len);
        let mut tokens = Vec::with_capacity(batch.len() * n);
        let mut mask = Vec::with_capacity(batch.len() * n);
        for (j, &s) in batch.iter().enumerate() {
            let mut rng = Rng::new(derive_seed(cfg.seed, &[TAG_MASK, step as u64, j as u64]));
            let m = masks.mask(s, &mut rng);
            if m.len() != n {
                return Err(Error::shape(format!(
                    "the mask source gave {} flags for sample {s}; the model has {n} patches",
                    m.len()
                )));
            }
            mask.extend_from_slice(&m);
            images.extend_from_slice(&data[s].image);
            tokens.extend_from_slice(&data[s].tokens);
        }
        // Forward, per-patch losses (from the logits' values), backward, update.
        let tape = Tape::new();
        let w = vit.bind(&tape);
        let (loss_var, out) = vit
            .loss_with(&tape, &w, &images, &mask, &tokens)
            .map_err(|e| Error::invalid(format!("training step {step}: {e}")))?;
        let loss = tape.scalar(loss_var);
        let patch_loss = per_patch_loss(&tape.value(out.logits), &out.rows, &tokens, mask.len());
        let mut grads = tape.backward(loss_var)?.into_params();
        let grad_norm = clip_grad_norm(&mut grads, cfg.clip_norm);
        let lr = cosine_lr(step, sched.warmup, sched.total, cfg.peak_lr, cfg.final_lr);
        opt.step(vit.params_mut(), &grads, lr)?;
        for (j, &s) in batch.iter().enumerate() {
            masks.observe(s, &patch_loss[j * n..(j + 1) * n]);
        }
        // Checkpoint after the step's every effect (weights, moments, mask state).
        let done = step + 1;
        let due = (cfg.checkpoint_every > 0 && done.is_multiple_of(cfg.checkpoint_every))
            || done.is_multiple_of(sched.steps_per_epoch)
            || done == end;
        let checkpointed = match checkpoint {
            Some(path) if due => {
                save_checkpoint(path, vit, &opt, masks, cfg, done, &fingerprint)?;
                true
            }
            _ => false,
        };
        losses.push(loss);
        images_seen += batch.len();
        progress(&StepReport {
            epoch,
            step: done,
            total_steps: sched.total,
            loss,
            lr,
            grad_norm,
            images_per_sec: batch.len() as f32 / t0.elapsed().as_secs_f32().max(1e-9),
            checkpointed,
        });
    }
    Ok(TrainReport {
        start_step: start,
        end_step: end.max(start),
        total_steps: sched.total,
        losses,
        images_per_sec: images_seen as f32 / started.elapsed().as_secs_f32().max(1e-9),
    })
}

/// Cross-entropy `lse(x) - x[target]` of each masked patch, scattered to `[B·N]` with NaN
/// where unmasked (what [`MaskSource::observe`] takes).
fn per_patch_loss(logits: &[f32], rows: &[usize], tokens: &[u32], len: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; len];
    let v = logits.len() / rows.len().max(1);
    for (row, &r) in logits.chunks(v).zip(rows) {
        out[r] = logsumexp(row) - row[tokens[r] as usize];
    }
    out
}

/// Writes the checkpoint (atomically) after `step` completed steps.
fn save_checkpoint(
    path: &Path,
    vit: &Vit,
    opt: &AdamW,
    masks: &dyn MaskSource,
    cfg: &TrainConfig,
    step: usize,
    fingerprint: &str,
) -> Result<()> {
    let mut tensors = vit.params().to_tensors();
    tensors.extend(opt.state_to_tensors(vit.params()));
    let state = masks.state();
    let n = state.len();
    tensors.push((MASK_STATE.to_string(), Tensor::new(state, &[n])?));
    let mut meta = vit.metadata()?;
    meta.insert(META_KIND.into(), KIND_NAME.into());
    meta.insert(META_STEP.into(), step.to_string());
    meta.insert(META_TRAIN.into(), cfg.schedule_json().to_string());
    meta.insert(META_DATA.into(), fingerprint.to_string());
    write_safetensors(path, tensors, Some(&meta))
}

/// Fields whose values differ between two JSON objects, as `name a (checkpoint) vs b (now)`.
fn differences(saved: &serde_json::Value, now: &serde_json::Value) -> String {
    let empty = serde_json::Map::new();
    let (a, b) = (
        saved.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let null = serde_json::Value::Null;
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k} {} (checkpoint) vs {} (now)",
                a.get(k).unwrap_or(&null),
                b.get(k).unwrap_or(&null)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Restores model, optimizer and mask state from `path`; returns the completed step count.
fn load_checkpoint(
    path: &Path,
    vit: &mut Vit,
    opt: &mut AdamW,
    masks: &mut dyn MaskSource,
    cfg: &TrainConfig,
    fingerprint: &str,
) -> Result<usize> {
    if !path.is_file() {
        return Err(Error::format(
            path,
            "no checkpoint to resume from (start without resume to train from scratch)",
        ));
    }
    let st = SafeTensors::open(path)?;
    let meta = st.metadata();
    let get = |key: &str| {
        meta.get(key).ok_or_else(|| {
            Error::format(
                path,
                format!("'{key}' missing from the metadata: not a pmad training checkpoint"),
            )
        })
    };
    if get(META_KIND)? != KIND_NAME {
        return Err(Error::format(path, "not a pmad training checkpoint"));
    }
    let refuse = |what: &str, diff: String| {
        Err(Error::format(
            path,
            format!(
                "cannot resume: the checkpoint was written with a different {what} ({diff}); \
                 use the same settings, or train from scratch without resume"
            ),
        ))
    };
    // The model config must match the model being trained.
    let saved_vit = Vit::config_of(&st)?;
    if &saved_vit != vit.config() {
        let to_json = |c| serde_json::to_value(c).unwrap_or_default();
        return refuse(
            "model config",
            differences(&to_json(&saved_vit), &to_json(vit.config())),
        );
    }
    let saved_train: serde_json::Value = serde_json::from_str(get(META_TRAIN)?)
        .map_err(|e| Error::format(path, format!("invalid '{META_TRAIN}': {e}")))?;
    if saved_train != cfg.schedule_json() {
        return refuse(
            "training config",
            differences(&saved_train, &cfg.schedule_json()),
        );
    }
    let saved_data = get(META_DATA)?;
    if saved_data != fingerprint {
        return refuse(
            "training data",
            format!("{saved_data} (checkpoint) vs {fingerprint} (now)"),
        );
    }
    let step: usize = get(META_STEP)?
        .parse()
        .map_err(|e| Error::format(path, format!("invalid '{META_STEP}': {e}")))?;
    // Everything matches: restore.
    vit.read_params(&st)?;
    let adam: Vec<(String, Tensor)> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("adamw."))
        .map(|n| Ok((n.to_string(), st.tensor(n)?)))
        .collect::<Result<_>>()?;
    opt.load_state_tensors(vit.params(), &adam)
        .map_err(|e| Error::format(path, e.to_string()))?;
    // A rank-1 float tensor of whatever length the mask source saved.
    let len = st.info(MASK_STATE).map_or(0, |i| i.shape.iter().product());
    let state = st.tensor_f32_checked(MASK_STATE, &[len])?;
    masks
        .load_state(&state.f32s())
        .map_err(|e| Error::format(path, format!("mask source state: {e}")))?;
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recon::vit::VitConfig;
    use std::path::PathBuf;

    /// Masks `k` of `n` patches, weighted toward patches with a high running loss (a
    /// miniature of dynamic masking), so its state changes every step and must be restored.
    #[derive(Clone, Debug, PartialEq)]
    struct TestMasks {
        n: usize,
        k: usize,
        /// Running loss per (sample, patch), then the number of masks drawn.
        state: Vec<f32>,
    }

    impl TestMasks {
        fn new(samples: usize, n: usize, k: usize) -> TestMasks {
            TestMasks {
                n,
                k,
                state: vec![0.0; samples * n + 1],
            }
        }
    }

    impl MaskSource for TestMasks {
        fn mask(&mut self, sample: usize, rng: &mut Rng) -> Vec<bool> {
            *self.state.last_mut().unwrap() += 1.0;
            // Efraimidis-Spirakis: the k largest ln(u)/w are a weighted draw without replacement.
            let keys: Vec<f32> = (0..self.n)
                .map(|p| rng.uniform().max(1e-12).ln() / (1.0 + self.state[sample * self.n + p]))
                .collect();
            let mut idx: Vec<usize> = (0..self.n).collect();
            idx.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]));
            let mut m = vec![false; self.n];
            idx[..self.k].iter().for_each(|&p| m[p] = true);
            m
        }
        fn observe(&mut self, sample: usize, patch_loss: &[f32]) {
            for (p, &l) in patch_loss.iter().enumerate() {
                if !l.is_nan() {
                    let s = &mut self.state[sample * self.n + p];
                    *s = 0.5 * *s + 0.5 * l;
                }
            }
        }
        fn state(&self) -> Vec<f32> {
            self.state.clone()
        }
        fn load_state(&mut self, state: &[f32]) -> Result<()> {
            if state.len() != self.state.len() {
                return Err(Error::invalid(format!(
                    "{} values, expected {}",
                    state.len(),
                    self.state.len()
                )));
            }
            self.state.copy_from_slice(state);
            Ok(())
        }
    }

    /// 16x16 images, 4x4 patches (a 4x4 grid), vocabulary 4.
    fn toy_config() -> VitConfig {
        VitConfig {
            image_size: 16,
            patch: 4,
            width: 16,
            depth: 1,
            decoder_depth: 1,
            heads: 2,
            mlp: 32,
            vocab: 4,
            input_dim: 0,
        }
    }

    /// A learnable toy: image `i` is flat colour `c = i % 4` plus noise, and every patch's
    /// token is its colour — a function of the patch content that a masked patch hides but
    /// its visible neighbours reveal.
    fn toy_data(c: &VitConfig, samples: usize, seed: u64) -> Vec<TrainSample> {
        let mut r = Rng::new(seed);
        (0..samples)
            .map(|i| {
                let colour = i % 4;
                let image = (0..c.image_len())
                    .map(|_| colour as f32 * 0.5 - 0.75 + r.range(-0.05, 0.05))
                    .collect();
                let tokens = vec![colour as u32; c.patches()];
                TrainSample { image, tokens }
            })
            .collect()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pmad_trainer_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn quick_config() -> TrainConfig {
        TrainConfig {
            epochs: 3,
            batch_size: 3,
            peak_lr: 5e-3,
            warmup_epochs: 0.5,
            checkpoint_every: 2,
            seed: 42,
            ..TrainConfig::default()
        }
    }

    /// The first parameter whose bits differ between two models (`None`: identical).
    fn first_difference(a: &Vit, b: &Vit) -> Option<String> {
        let (pa, pb) = (a.params(), b.params());
        pa.ids().find_map(|id| {
            let same = pa
                .values(id)
                .iter()
                .zip(pb.values(id))
                .all(|(x, y)| x.to_bits() == y.to_bits());
            (!same).then(|| pa.name(id).to_string())
        })
    }

    #[test]
    fn loss_decreases_on_a_learnable_toy() {
        let c = toy_config();
        let data = toy_data(&c, 12, 1);
        let mut vit = Vit::new(c.clone(), 2).unwrap();
        let mut masks = TestMasks::new(12, 16, 6);
        let cfg = TrainConfig {
            epochs: 40,
            batch_size: 4,
            peak_lr: 1e-2,
            seed: 3,
            ..TrainConfig::default()
        };
        let mut seen = Vec::new();
        let report = train(&mut vit, &data, &mut masks, &cfg, None, false, &mut |r| {
            seen.push((r.step, r.lr))
        })
        .unwrap();
        assert!(report.finished() && report.losses.len() == 120);
        assert_eq!(seen.len(), 120);
        assert_eq!(seen[0], (1, 0.0), "warm-up starts at lr 0");
        assert!(
            (seen[3].1 - 1e-2).abs() < 1e-9,
            "peak after one epoch of 3 steps"
        );
        let first: f32 = report.losses[..3].iter().sum::<f32>() / 3.0;
        let last: f32 = report.losses[114..].iter().sum::<f32>() / 6.0;
        assert!(first > 1.2, "starts near ln 4: {first}");
        assert!(last < 0.3 * first, "loss {first} -> {last}");
        // The trained model predicts the hidden patches of fresh images of every colour.
        let mask: Vec<bool> = (0..16).map(|q| q % 5 == 0).collect();
        for probe in toy_data(&c, 4, 99) {
            let ce = vit
                .token_cross_entropy(&probe.image, &mask, &probe.tokens)
                .unwrap();
            for (q, &v) in ce.iter().enumerate() {
                assert!(if mask[q] { v < 0.5 } else { v == 0.0 }, "patch {q}: {v}");
            }
        }
    }

    #[test]
    fn stop_and_resume_is_bit_identical() {
        let c = toy_config();
        let data = toy_data(&c, 8, 5);
        let cfg = quick_config(); // 3 steps per epoch (3 + 3 + 2 images), 9 steps
        let mut full = Vit::new(c.clone(), 6).unwrap();
        let mut full_masks = TestMasks::new(8, 16, 5);
        let r = train(
            &mut full,
            &data,
            &mut full_masks,
            &cfg,
            None,
            false,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((r.start_step, r.end_step, r.total_steps), (0, 9, 9));

        let dir = scratch("resume");
        let ckpt = dir.join("train.safetensors");
        let mut vit = Vit::new(c.clone(), 6).unwrap();
        let mut masks = TestMasks::new(8, 16, 5);
        let stop = TrainConfig {
            stop_after_steps: Some(5),
            ..cfg.clone()
        };
        let mut written = Vec::new();
        let r = train(
            &mut vit,
            &data,
            &mut masks,
            &stop,
            Some(&ckpt),
            false,
            &mut |s| {
                if s.checkpointed {
                    written.push(s.step)
                }
            },
        )
        .unwrap();
        assert_eq!((r.end_step, r.finished()), (5, false));
        assert_eq!(
            written,
            vec![2, 3, 4, 5],
            "every 2 steps, epoch end at 3, the stop"
        );

        // A new process would start from a fresh (differently seeded) model and mask source.
        let mut vit = Vit::new(c.clone(), 1234).unwrap();
        let mut masks = TestMasks::new(8, 16, 5);
        let r = train(
            &mut vit,
            &data,
            &mut masks,
            &cfg,
            Some(&ckpt),
            true,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((r.start_step, r.end_step, r.losses.len()), (5, 9, 4));
        assert_eq!(
            first_difference(&vit, &full),
            None,
            "differs from the uninterrupted run"
        );
        let sb = |m: &TestMasks| m.state.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(sb(&masks) == sb(&full_masks), "mask source states differ");
        // Resuming a finished run does nothing and keeps the weights.
        let r = train(
            &mut vit,
            &data,
            &mut masks,
            &cfg,
            Some(&ckpt),
            true,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((r.start_step, r.losses.len()), (9, 0));
        assert_eq!(first_difference(&vit, &full), None);
        // The checkpoint is also a loadable model.
        assert_eq!(first_difference(&Vit::load(&ckpt).unwrap(), &full), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_refuses_mismatches_and_missing_files() {
        let c = toy_config();
        let data = toy_data(&c, 4, 7);
        let dir = scratch("mismatch");
        let ckpt = dir.join("ck.safetensors");
        let cfg = TrainConfig {
            stop_after_steps: Some(1),
            ..quick_config()
        };
        let run = |vit: &mut Vit, data: &[TrainSample], cfg: &TrainConfig, resume: bool| {
            let mut masks = TestMasks::new(4, 16, 5);
            train(vit, data, &mut masks, cfg, Some(&ckpt), resume, &mut |_| {})
        };
        let err = |r: Result<TrainReport>| r.unwrap_err().to_string();
        let e = err(run(&mut Vit::new(c.clone(), 0).unwrap(), &data, &cfg, true));
        assert!(
            e.contains("ck.safetensors") && e.contains("no checkpoint"),
            "{e}"
        );
        run(&mut Vit::new(c.clone(), 0).unwrap(), &data, &cfg, false).unwrap();

        let other = TrainConfig {
            batch_size: 2,
            ..cfg.clone()
        };
        let e = err(run(
            &mut Vit::new(c.clone(), 0).unwrap(),
            &data,
            &other,
            true,
        ));
        assert!(
            e.contains("ck.safetensors") && e.contains("training config"),
            "{e}"
        );
        assert!(e.contains("batch_size 3 (checkpoint) vs 2 (now)"), "{e}");

        let wider = VitConfig {
            width: 32,
            ..c.clone()
        };
        let e = err(run(&mut Vit::new(wider, 0).unwrap(), &data, &cfg, true));
        assert!(
            e.contains("model config") && e.contains("width 16 (checkpoint) vs 32"),
            "{e}"
        );

        let mut changed = data.clone();
        changed[2].tokens[0] ^= 1;
        let e = err(run(
            &mut Vit::new(c.clone(), 0).unwrap(),
            &changed,
            &cfg,
            true,
        ));
        assert!(e.contains("training data"), "{e}");

        // Changing only when to checkpoint or stop is fine.
        let later = TrainConfig {
            checkpoint_every: 0,
            stop_after_steps: Some(2),
            ..cfg.clone()
        };
        let r = run(&mut Vit::new(c.clone(), 0).unwrap(), &data, &later, true).unwrap();
        assert_eq!((r.start_step, r.end_step), (1, 2));

        // A mask source whose state does not fit is refused, naming the file.
        let mut masks = TestMasks::new(3, 16, 5);
        let mut vit = Vit::new(c.clone(), 0).unwrap();
        let e = train(
            &mut vit,
            &data,
            &mut masks,
            &cfg,
            Some(&ckpt),
            true,
            &mut |_| {},
        );
        let e = err(e);
        assert!(
            e.contains("ck.safetensors") && e.contains("mask source state"),
            "{e}"
        );

        // A plain model file is not a checkpoint.
        vit.save(&ckpt).unwrap();
        let e = err(run(&mut Vit::new(c.clone(), 0).unwrap(), &data, &cfg, true));
        assert!(e.contains("not a pmad training checkpoint"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checkpoint_is_always_complete_and_no_temp_files_remain() {
        let c = toy_config();
        let data = toy_data(&c, 5, 8);
        let dir = scratch("atomic");
        let ckpt = dir.join("ck.safetensors");
        let cfg = TrainConfig {
            checkpoint_every: 1,
            ..quick_config()
        };
        let mut masks = TestMasks::new(5, 16, 5);
        let mut vit = Vit::new(c.clone(), 0).unwrap();
        let mut checked = 0;
        train(
            &mut vit,
            &data,
            &mut masks,
            &cfg,
            Some(&ckpt),
            false,
            &mut |s| {
                // Whenever training hands control back, the file on disk is a whole checkpoint
                // of the step just done, and the temp file it was written through is gone.
                let st = SafeTensors::open(&ckpt).unwrap();
                assert_eq!(st.metadata()[META_STEP], s.step.to_string());
                assert!(st.names().len() > vit_param_count(&c));
                let names: Vec<_> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert_eq!(names, vec!["ck.safetensors"], "leftover temp file");
                checked += 1;
            },
        )
        .unwrap();
        assert_eq!(checked, 6);
        // A write that cannot happen fails cleanly and leaves nothing behind.
        let bad = dir.join("missing_dir").join("ck.safetensors");
        let mut masks = TestMasks::new(5, 16, 5);
        let e = train(
            &mut vit,
            &data,
            &mut masks,
            &cfg,
            Some(&bad),
            false,
            &mut |_| {},
        );
        assert!(e.unwrap_err().to_string().contains("missing_dir"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn vit_param_count(c: &VitConfig) -> usize {
        Vit::new(c.clone(), 0).unwrap().params().len()
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = toy_config();
        let mut data = toy_data(&c, 2, 9);
        let mut vit = Vit::new(c.clone(), 0).unwrap();
        let cfg = quick_config();
        let mut go = |data: &[TrainSample], masks: &mut TestMasks, cfg: &TrainConfig| {
            train(&mut vit, data, masks, cfg, None, false, &mut |_| {})
                .unwrap_err()
                .to_string()
        };
        let mut m = TestMasks::new(2, 16, 5);
        assert!(go(&[], &mut m, &cfg).contains("at least one sample"));
        let zero = TrainConfig {
            batch_size: 0,
            ..cfg.clone()
        };
        assert!(go(&data, &mut m, &zero).contains("batch_size"));
        let mut wrong_len = TestMasks::new(2, 15, 5);
        assert!(go(&data, &mut wrong_len, &cfg).contains("15 flags"));
        let mut none = TestMasks::new(2, 16, 0);
        assert!(go(&data, &mut none, &cfg).contains("no patch is masked"));
        data[1].tokens[3] = 4;
        assert!(go(&data, &mut m, &cfg).contains("sample 1: token id 4"));
        data[1].image.pop();
        assert!(go(&data, &mut m, &cfg).contains("sample 1"));
    }

    #[test]
    fn schedule_and_seeds() {
        let cfg = TrainConfig {
            epochs: 4,
            batch_size: 3,
            warmup_epochs: 0.5,
            ..TrainConfig::default()
        };
        let s = Schedule::new(&cfg, 10);
        assert_eq!((s.steps_per_epoch, s.total, s.warmup), (4, 16, 2));
        let (a, b) = (epoch_order(1, 0, 10), epoch_order(1, 1, 10));
        assert_ne!(a, b, "each epoch has its own order");
        assert_eq!(a, epoch_order(1, 0, 10));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(derive_seed(0, &[1, 2]), derive_seed(0, &[2, 1]));
        assert_ne!(
            derive_seed(0, &[TAG_MASK, 3, 0]),
            derive_seed(0, &[TAG_MASK, 3, 1])
        );
    }
}
