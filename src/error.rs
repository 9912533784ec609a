//! One error type for the whole library. Every error that comes from user data names the file
//! (and, where it applies, the tensor or field) so a one-line message is enough to act on.
//!
//! An embedding program can match on the conditions it may want to handle itself — a class
//! that is not registered ([`Error::ClassNotRegistered`]), a model directory written by
//! another pmad ([`Error::ModelVersion`]), an image it passed that cannot be used
//! ([`Error::BadImage`]), backbone weights not fetched yet ([`Error::WeightsMissing`]) — and
//! show the rest. The enum is `#[non_exhaustive]`: later versions may add variants, so a
//! `match` needs a `_` arm.
//!
//! ```
//! use pmad::Error;
//! fn describe(e: &Error) -> String {
//!     match e {
//!         Error::ClassNotRegistered { class, .. } => format!("register '{class}' first"),
//!         Error::WeightsMissing { hint, .. } => format!("run `{hint}`"),
//!         other => other.to_string(),
//!     }
//! }
//! # let _ = describe;
//! ```

#![warn(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};

/// Every error of the library.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The OS refused a read or write.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file was read but its content is wrong (corrupt, truncated, unexpected layout).
    #[error("{path}: {msg}")]
    Format {
        /// The file (or folder) whose content is wrong.
        path: PathBuf,
        /// What is wrong, naming the field or tensor where it applies.
        msg: String,
    },
    /// Tensor shapes that do not fit the op.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A bad argument or configuration.
    #[error("{0}")]
    Invalid(String),
    /// The CUDA backend was asked for but is unavailable or failed.
    #[error("cuda: {0}")]
    Cuda(String),
    /// A computed value is NaN or infinite. Never turned into a verdict: the image, the class
    /// and the stage that produced it are named so the cause (broken weights, a corrupt
    /// input) can be found.
    #[error(
        "class '{class}', image {image} of the batch: the {stage} produced a non-finite \
         value ({value}); no verdict (corrupt weights or input?)"
    )]
    NonFinite {
        /// The class scored against (empty while embedding for a registration).
        class: String,
        /// Index of the image in the batch that was scored.
        image: usize,
        /// backbone | search | flow | vit | map
        stage: &'static str,
        /// The first non-finite value.
        value: f32,
    },
    /// The class asked for has no stored model in the model directory.
    #[error(
        "{}: class '{class}' is not registered (registered: {}); register it with \
         `pmad register --model {} --data ROOT --class {class}`",
        model_dir.display(),
        list_or_none(registered),
        model_dir.display()
    )]
    ClassNotRegistered {
        /// The class asked for.
        class: String,
        /// The model directory searched.
        model_dir: PathBuf,
        /// The classes that are registered there (sorted).
        registered: Vec<String>,
    },
    /// A model directory (its `model.json`) of a format version this pmad cannot read.
    #[error(
        "{}: field 'format_version': model format version {found} is not supported by this \
         pmad (it reads versions 1 to {supported}); retrain or use a matching pmad",
        path.display()
    )]
    ModelVersion {
        /// The `model.json`.
        path: PathBuf,
        /// The version found (`missing`, a number, or the wrong JSON value).
        found: String,
        /// The newest version this pmad reads (it reads every version from 1 up to it).
        supported: u32,
    },
    /// An image that cannot be used: a file that does not decode, a buffer shorter than its
    /// stated size, an image without pixels.
    #[error("{origin}: {reason}")]
    BadImage {
        /// Which image: its file, or its index in the batch the caller passed.
        origin: ImageOrigin,
        /// What is wrong with it.
        reason: String,
    },
    /// Pretrained weights (the model's backbone) are not where they are looked for.
    #[error("{}: {what} not found; run `{hint}`", path.display())]
    WeightsMissing {
        /// Where the file was looked for.
        path: PathBuf,
        /// Which weights, e.g. "EfficientNet-lite0 weights (the model's backbone)".
        what: String,
        /// The command that fetches them, e.g. `pmad fetch-weights --backbone lite0`.
        hint: String,
    },
}

/// Where an image named in an [`Error::BadImage`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageOrigin {
    /// A file (or bytes named after one).
    File(PathBuf),
    /// The image at this index of the slice the caller passed.
    Batch(usize),
    /// A single in-memory image or pixel buffer.
    Memory,
}

impl fmt::Display for ImageOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageOrigin::File(p) => write!(f, "{}", p.display()),
            ImageOrigin::Batch(i) => write!(f, "image {i} of the batch"),
            ImageOrigin::Memory => write!(f, "in-memory image"),
        }
    }
}

/// "a, b, c", or "none" for an empty list.
fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] naming `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An [`Error::Format`] naming `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An [`Error::Shape`].
    pub fn shape(msg: impl Into<String>) -> Error {
        Error::Shape(msg.into())
    }

    /// An [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }

    /// An [`Error::BadImage`].
    pub fn bad_image(origin: ImageOrigin, reason: impl Into<String>) -> Error {
        Error::BadImage {
            origin,
            reason: reason.into(),
        }
    }

    /// The same error with a [`Error::BadImage`]'s origin replaced by `origin` (e.g. the
    /// image's index in the caller's batch, or its file); any other error unchanged.
    pub fn at_image(self, origin: ImageOrigin) -> Error {
        match self {
            Error::BadImage { reason, .. } => Error::BadImage { origin, reason },
            e => e,
        }
    }
}
