//! The anomaly detector: features -> prototypes -> (ProtoFlow) abnormality -> maps and scores.

pub mod augment;
pub mod calibrate;
mod class_cache;
pub mod class_store;
pub mod coreset;
pub mod device;
pub mod evaluate;
pub mod features;
pub mod flow;
pub mod model_dir;
mod normal_images;
pub mod outputs;
mod patch_scores;
pub mod pipeline;
pub mod register;
pub mod resident;
pub mod reweight;
pub mod scoring;
pub(crate) mod stage2;
pub mod train;

pub use coreset::{CoresetConfig, select_coreset};
pub use device::Device;
pub use features::{FeatureExtractor, FeatureSpec};
pub use pipeline::{Detector, Inspection};
