//! Combinational training masking: [`CombinationalMasker`], the training-time
//! [`MaskSource`] that draws a region, a weighting and a placement per image.

use super::super::{MaskSource, PATCHES};
use super::cues::min_max;
use super::mask_count;
use super::placement::{blockwise_fill, fill_weighted};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Where masked patches may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// Only the image's [`foreground`](super::foreground) (filled up from the rest when it is
    /// too small).
    Foreground,
    /// Anywhere.
    All,
}

/// What makes a patch more likely to be masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weighting {
    /// High-frequency energy ([`frequency_weights`](super::frequency_weights)).
    Frequency,
    /// The patch's running reconstruction loss (learned during training).
    Dynamic,
    /// Nothing: every patch alike.
    Uniform,
}

/// How masked patches are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Rectangular blocks ([`sample_blockwise`](super::sample_blockwise)).
    Blockwise,
    /// Patch by patch ([`sample_weighted`](super::sample_weighted)).
    Random,
}

/// One combination of the three choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    pub region: Region,
    pub weighting: Weighting,
    pub placement: Placement,
}

impl Strategy {
    /// All 12 combinations.
    pub fn all() -> Vec<Strategy> {
        let mut out = Vec::new();
        for region in [Region::Foreground, Region::All] {
            for weighting in [Weighting::Frequency, Weighting::Dynamic, Weighting::Uniform] {
                for placement in [Placement::Blockwise, Placement::Random] {
                    out.push(Strategy {
                        region,
                        weighting,
                        placement,
                    });
                }
            }
        }
        out
    }
}

/// Settings of [`CombinationalMasker`].
#[derive(Clone, Debug, PartialEq)]
pub struct MaskingConfig {
    /// Fraction of the 196 patches masked per image ([`mask_count`]).
    pub ratio: f32,
    /// Probability of [`Region::Foreground`] (else [`Region::All`]).
    pub p_foreground: f32,
    /// Relative odds of [`Weighting::Frequency`], [`Weighting::Dynamic`], [`Weighting::Uniform`].
    pub weighting_odds: [f32; 3],
    /// Probability of [`Placement::Blockwise`] (else [`Placement::Random`]).
    pub p_blockwise: f32,
    /// Momentum of the running per-patch loss behind [`Weighting::Dynamic`]:
    /// `ema = momentum * ema + (1 - momentum) * loss`.
    pub dynamic_momentum: f32,
}

impl MaskingConfig {
    /// The paper's mix (METHOD.md): region 1/2-1/2, weighting 1/3 each, placement 1/2-1/2;
    /// dynamic momentum 0.9.
    pub fn new(ratio: f32) -> MaskingConfig {
        MaskingConfig {
            ratio,
            p_foreground: 0.5,
            weighting_odds: [1.0, 1.0, 1.0],
            p_blockwise: 0.5,
            dynamic_momentum: 0.9,
        }
    }

    /// Always the one strategy given (ablations, tests).
    pub fn forced(ratio: f32, strategy: Strategy) -> MaskingConfig {
        let one_hot = |w: Weighting| if strategy.weighting == w { 1.0 } else { 0.0 };
        MaskingConfig {
            ratio,
            p_foreground: if strategy.region == Region::Foreground {
                1.0
            } else {
                0.0
            },
            weighting_odds: [
                one_hot(Weighting::Frequency),
                one_hot(Weighting::Dynamic),
                one_hot(Weighting::Uniform),
            ],
            p_blockwise: if strategy.placement == Placement::Blockwise {
                1.0
            } else {
                0.0
            },
            dynamic_momentum: 0.9,
        }
    }

    /// Checks every field is in range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "masking config: {name} = {v} is not in [0, 1]"
                )))
            }
        };
        unit("ratio", self.ratio)?;
        unit("p_foreground", self.p_foreground)?;
        unit("p_blockwise", self.p_blockwise)?;
        unit("dynamic_momentum", self.dynamic_momentum)?;
        let odds = self.weighting_odds;
        if odds.iter().any(|o| !(o.is_finite() && *o >= 0.0)) || odds.iter().sum::<f32>() <= 0.0 {
            return Err(Error::invalid(format!(
                "masking config: weighting_odds {odds:?} must be finite, non-negative and not all 0"
            )));
        }
        Ok(())
    }
}

/// Combinational masking for training (METHOD.md "Training the reconstruction model"): per
/// image and step, a [`Strategy`] is drawn (region, then weighting, then placement, with the
/// config's probabilities) and a mask of exactly [`mask_count`]`(ratio)` patches is drawn with
/// it.
///
/// Dynamic weighting keeps, per (sample, patch), an exponential moving average of the patch's
/// reconstruction loss (initialised to 1.0), fed by [`MaskSource::observe`] and min-max
/// normalised when used, so patches the model reconstructs badly get masked more often. The
/// table is the masker's only state ([`MaskSource::state`]); it does not depend on the batch
/// size (the release assumed batch size 1).
#[derive(Clone, Debug)]
pub struct CombinationalMasker {
    config: MaskingConfig,
    frequency: Vec<Vec<f32>>,
    pub(super) foreground: Vec<Vec<bool>>,
    /// `[samples, PATCHES]` running loss.
    running_loss: Vec<f32>,
}

impl CombinationalMasker {
    /// `frequency[s]` and `foreground[s]` are sample `s`'s cues
    /// ([`frequency_weights`](super::frequency_weights), [`foreground`](super::foreground)),
    /// computed once by the caller. Errors on a bad config, a count mismatch, a cue that is
    /// not 196 long or a negative / non-finite frequency weight.
    pub fn new(
        frequency: Vec<Vec<f32>>,
        foreground: Vec<Vec<bool>>,
        config: MaskingConfig,
    ) -> Result<CombinationalMasker> {
        config.validate()?;
        if frequency.len() != foreground.len() {
            return Err(Error::invalid(format!(
                "combinational masking: {} frequency maps but {} foregrounds",
                frequency.len(),
                foreground.len()
            )));
        }
        for (s, (f, g)) in frequency.iter().zip(&foreground).enumerate() {
            if f.len() != PATCHES || g.len() != PATCHES {
                return Err(Error::invalid(format!(
                    "combinational masking: sample {s} has {} frequency weights and {} \
                     foreground flags, expected {PATCHES} each",
                    f.len(),
                    g.len()
                )));
            }
            if let Some(p) = f.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
                return Err(Error::invalid(format!(
                    "combinational masking: sample {s} patch {p} has frequency weight {}",
                    f[p]
                )));
            }
        }
        let running_loss = vec![1.0; frequency.len() * PATCHES];
        Ok(CombinationalMasker {
            config,
            frequency,
            foreground,
            running_loss,
        })
    }

    /// Number of training samples.
    pub fn len(&self) -> usize {
        self.frequency.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frequency.is_empty()
    }

    pub fn config(&self) -> &MaskingConfig {
        &self.config
    }

    /// Draws a strategy: three uniforms, always all three (the stream does not depend on the
    /// outcome).
    pub fn draw_strategy(&self, rng: &mut Rng) -> Strategy {
        let c = &self.config;
        let region = if rng.uniform() < c.p_foreground {
            Region::Foreground
        } else {
            Region::All
        };
        let [f, d, _] = c.weighting_odds;
        let u = rng.uniform() * c.weighting_odds.iter().sum::<f32>();
        let weighting = if u < f {
            Weighting::Frequency
        } else if u < f + d {
            Weighting::Dynamic
        } else {
            Weighting::Uniform
        };
        let placement = if rng.uniform() < c.p_blockwise {
            Placement::Blockwise
        } else {
            Placement::Random
        };
        Strategy {
            region,
            weighting,
            placement,
        }
    }

    /// Sample `sample`'s dynamic weights: its running losses, min-max normalised.
    pub fn dynamic_weights(&self, sample: usize) -> Vec<f32> {
        min_max(&self.running_loss[sample * PATCHES..(sample + 1) * PATCHES])
    }

    /// The mask `strategy` gives for `sample`. Panics when `sample` is out of range.
    pub fn mask_with(&self, sample: usize, strategy: Strategy, rng: &mut Rng) -> Vec<bool> {
        assert!(
            sample < self.len(),
            "sample {sample} of {} masked",
            self.len()
        );
        let count = mask_count(self.config.ratio);
        let allowed = match strategy.region {
            Region::Foreground => Some(&self.foreground[sample][..]),
            Region::All => None,
        };
        let dynamic;
        let weights = match strategy.weighting {
            Weighting::Frequency => Some(&self.frequency[sample][..]),
            Weighting::Dynamic => {
                dynamic = self.dynamic_weights(sample);
                Some(&dynamic[..])
            }
            Weighting::Uniform => None,
        };
        match strategy.placement {
            Placement::Blockwise => blockwise_fill(weights, allowed, count, rng).0,
            Placement::Random => {
                let mut mask = vec![false; PATCHES];
                fill_weighted(
                    &mut mask,
                    weights,
                    allowed.unwrap_or(&[true; PATCHES]),
                    count,
                    rng,
                );
                mask
            }
        }
    }
}

impl MaskSource for CombinationalMasker {
    fn mask(&mut self, sample: usize, rng: &mut Rng) -> Vec<bool> {
        let strategy = self.draw_strategy(rng);
        self.mask_with(sample, strategy, rng)
    }

    /// Updates the running loss of every patch with a finite loss (NaN = unmasked: skipped).
    /// Panics when `sample` is out of range or `patch_loss` is not 196 long (trainer bugs).
    fn observe(&mut self, sample: usize, patch_loss: &[f32]) {
        assert!(
            sample < self.len(),
            "sample {sample} of {} observed",
            self.len()
        );
        assert_eq!(patch_loss.len(), PATCHES, "patch losses must be 196 long");
        let m = self.config.dynamic_momentum;
        let row = &mut self.running_loss[sample * PATCHES..(sample + 1) * PATCHES];
        for (ema, &loss) in row.iter_mut().zip(patch_loss) {
            if loss.is_finite() {
                *ema = m * *ema + (1.0 - m) * loss;
            }
        }
    }

    /// The running-loss table, `[samples * 196]`.
    fn state(&self) -> Vec<f32> {
        self.running_loss.clone()
    }

    /// Restores [`state`](MaskSource::state); errors on a wrong length or a non-finite value.
    fn load_state(&mut self, state: &[f32]) -> Result<()> {
        if state.len() != self.running_loss.len() {
            return Err(Error::invalid(format!(
                "masking state holds {} values, expected {} ({} samples x {PATCHES} patches); \
                 was the checkpoint made on another training set?",
                state.len(),
                self.running_loss.len(),
                self.len()
            )));
        }
        if let Some(i) = state.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "masking state: value {i} (sample {}, patch {}) is {}",
                i / PATCHES,
                i % PATCHES,
                state[i]
            )));
        }
        self.running_loss.copy_from_slice(state);
        Ok(())
    }
}
