//! The normal images of a registration, wherever they are: files on disk (`pmad register`,
//! [`Detector::register`](crate::detector::Detector::register)) or decoded images the caller
//! holds in memory ([`Detector::register_images`](crate::detector::Detector::register_images)).
//! Registration and calibration read images through this one type, so both doors take the
//! same code path and give the same class.

use crate::data::image::{RgbImage, load_rgb};
use crate::detector::pipeline::image_input;
use crate::error::{Error, ImageOrigin, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// One normal image: a file, or an in-memory image with its index in the caller's slice.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NormalImage<'a> {
    File(&'a Path),
    Memory { image: &'a RgbImage, index: usize },
}

impl<'a> NormalImage<'a> {
    /// The files `paths`, in order.
    pub fn files(paths: &'a [PathBuf]) -> Vec<NormalImage<'a>> {
        paths.iter().map(|p| NormalImage::File(p)).collect()
    }

    /// The in-memory `images`, in order (each knows its index, for messages).
    pub fn memory(images: &'a [RgbImage]) -> Vec<NormalImage<'a>> {
        images
            .iter()
            .enumerate()
            .map(|(index, image)| NormalImage::Memory { image, index })
            .collect()
    }

    /// How errors name this image.
    pub fn origin(&self) -> ImageOrigin {
        match self {
            NormalImage::File(p) => ImageOrigin::File(p.to_path_buf()),
            NormalImage::Memory { index, .. } => ImageOrigin::Batch(*index),
        }
    }

    /// How `class.json` names this image (its outlier list): the file, or `<image i>` for
    /// the i-th in-memory image (which has no file).
    pub fn label(&self) -> PathBuf {
        match self {
            NormalImage::File(p) => p.to_path_buf(),
            NormalImage::Memory { index, .. } => PathBuf::from(format!("<image {index}>")),
        }
    }

    /// The `[3, size, size]` network input: decoded from the file, or from the checked
    /// in-memory image (a malformed one is an [`Error::BadImage`] naming its index).
    fn input(&self, size: usize) -> Result<Vec<f32>> {
        match self {
            NormalImage::File(p) => load_rgb(p).map(|i| image_input(&i, size)),
            NormalImage::Memory { image, .. } => {
                image.validate().map_err(|e| e.at_image(self.origin()))?;
                Ok(image_input(image, size))
            }
        }
    }
}

/// The images decoded (in parallel) into one `[n, 3, size, size]` batch of network inputs.
pub(crate) fn load_inputs(images: &[NormalImage], size: usize) -> Result<Tensor> {
    let inputs: Vec<Vec<f32>> = images
        .par_iter()
        .map(|i| i.input(size))
        .collect::<Result<_>>()?;
    Tensor::new(inputs.concat(), &[images.len(), 3, size, size])
}

/// Turns "image i of the batch" in a non-finite error into the name of `images[i]` (its file,
/// or its index in the caller's slice).
pub(crate) fn name_image(e: Error, images: &[NormalImage]) -> Error {
    match e {
        Error::NonFinite { image, .. } if image < images.len() => {
            Error::invalid(format!("{}: {e}", images[image].origin()))
        }
        e => e,
    }
}
