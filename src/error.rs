//! One error type for the whole library. Every error that comes from user data names the file
//! (and, where it applies, the tensor or field) so a one-line message is enough to act on.

use std::path::{Path, PathBuf};

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The OS refused a read or write.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but its content is wrong (corrupt, truncated, unexpected layout).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
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
        class: String,
        /// Index of the image in the batch that was scored.
        image: usize,
        /// backbone | search | flow | vit | map
        stage: &'static str,
        value: f32,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn shape(msg: impl Into<String>) -> Error {
        Error::Shape(msg.into())
    }

    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
}
