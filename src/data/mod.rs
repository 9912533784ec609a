//! Images in, tensors out: decoding (PNG/JPEG/BMP/TIFF, 8/16-bit, gray/RGB/RGBA), the dataset
//! layouts (MVTec AD, plain folders, VisA, BTAD) and the preprocessing
//! the backbone expects.

pub mod image;
pub mod view;

pub use image::{RgbImage, classification_input, load_rgb, to_network_input};
pub use view::{ImageView, ImageViewError, PixelFormat};

pub mod dataset;
pub mod layout;
pub mod synth;

pub use dataset::{ClassData, TestItem, list_classes, load_image_input, load_mask};
pub use layout::{Layout, LayoutChoice};
pub use synth::{SynthClass, SynthConfig, SynthSummary};
