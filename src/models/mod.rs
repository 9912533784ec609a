//! Networks built from [`crate::ops`]. Model code never names a backend.

pub mod efficientnet;
pub mod efficientnet_infer;

pub use efficientnet::{Backbone, EfficientNetLite, EfficientNetLite0};
