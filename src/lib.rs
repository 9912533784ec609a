//! pmad — a cross-class industrial anomaly detection engine (PMAD, AAAI-23).
//!
//! Layers, bottom to top:
//! - [`tensor`]: shape + shared buffer (owned f32/f16/bf16 or a memory-mapped window);
//! - [`ops`]: every numeric op, one file each, the CPU implementation being the reference;
//! - [`autograd`]: a small reverse-mode tape with AdamW and schedules, for training;
//! - [`weights`]: safetensors (mmap, atomic writer) and PyTorch checkpoint import;
//! - [`models`]: networks built from ops (EfficientNet-Lite0 backbone, ...);
//! - [`backend`]: the seam between the detector and the CPU / CUDA backends;
//! - [`data`]: image decoding and preprocessing;
//! - [`serve`]: `pmad serve`, the HTTP service (dynamic batching, metrics).

pub mod alloc;
pub mod autograd;
pub mod backend;
pub mod bench;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod detector;
pub mod error;
pub mod fault;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod recon;
pub mod report;
pub mod rng;
pub mod serve;
pub mod tensor;
pub mod weights;

pub use error::{Error, ImageOrigin, Result};
pub use tensor::{DType, Tensor};
