//! Reconstruction stage of PMAD (METHOD.md §5-7): visual tokens, the masked ViT that
//! predicts them, the masking strategies used to train it and to run it.
//!
//! - [`masking`]: combinational training masks and the inference masks (proposal, random,
//!   blockwise), all sampled without replacement so a ratio is met exactly;
//! - [`tokenizer`]: a k-means codebook over backbone patch features on the ViT grid (or
//!   token ids made elsewhere);
//! - [`vit`]: the ViT (patch embedding, `[M]` token, pre-norm encoder/decoder, token head);
//! - [`vit_infer`]: its inference forward, written once over the backends' op set;
//! - [`trainer`]: masked-token training with checkpoints and exact resume.

pub mod masking;
pub mod tokenizer;
pub mod trainer;
pub mod vit;
pub mod vit_infer;

/// Patches per side of the ViT grid (16x16 patches of a 224x224 input).
pub const GRID: usize = 14;
/// Patches per image on the ViT grid.
pub const PATCHES: usize = GRID * GRID;

/// Where training masks come from. The trainer asks for one mask per (sample, step) and
/// reports back each masked patch's loss (dynamic weighting learns from it); the state goes
/// into checkpoints so a resumed run draws exactly the masks an uninterrupted one would.
pub trait MaskSource {
    /// A mask of the model's patch count of booleans (true = masked; [`PATCHES`] at the
    /// default 224 input) for training sample `sample`.
    fn mask(&mut self, sample: usize, rng: &mut crate::rng::Rng) -> Vec<bool>;
    /// Per-patch cross-entropy of the last step for `sample` (`f32::NAN` where unmasked).
    fn observe(&mut self, _sample: usize, _patch_loss: &[f32]) {}
    /// State to checkpoint (empty when stateless).
    fn state(&self) -> Vec<f32> {
        Vec::new()
    }
    /// Restores [`state`](Self::state).
    fn load_state(&mut self, _state: &[f32]) -> crate::Result<()> {
        Ok(())
    }
}
