//! The model the server scores with, and registering a class while it serves.
//!
//! [`crate::detector::Detector::register`] takes `&mut self`, but the scoring worker holds
//! the detector shared. So the server never mutates the detector it serves: a registration
//! opens a *second* detector on the same model directory, registers the class into it
//! (which writes the class's new version to disk atomically, under the directory's writer
//! lock), loads every class into it, and then swaps it in under a write lock held only for
//! the pointer swap ([`ModelSlot`] is an `RwLock<Arc<Detector>>`). A batch that started
//! before the swap finishes on the detector it cloned the `Arc` of; the next batch gets the
//! new one, and the old detector is freed when its last batch ends. Scoring never waits for
//! a registration, only for the swap itself. One registration runs at a time; a second one
//! meanwhile gets 503.

use crate::data::image::RgbImage;
use crate::detector::model_dir::ClassInfo;
use crate::detector::{Detector, class_store};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, TryLockError};

/// The served detector, swapped whole on registration (see the module docs).
pub struct ModelSlot {
    current: RwLock<Arc<Detector>>,
    /// Held for the whole of a registration.
    registering: Mutex<()>,
    weights: Option<PathBuf>,
    device: crate::detector::Device,
}

/// Why a registration did not start or did not finish.
pub enum RegisterError {
    /// Another registration is running.
    Busy,
    /// The registration itself failed (nothing was swapped).
    Failed(Error),
}

impl ModelSlot {
    /// Opens the model directory, moves scoring to `device` and loads every class (so the
    /// first request of each does not pay for loading it, and a broken class is reported at
    /// start). Returns the slot and the classes that failed to load, with why.
    pub fn open(
        dir: &Path,
        weights: Option<&Path>,
        device: crate::detector::Device,
    ) -> Result<(ModelSlot, Vec<(String, Error)>)> {
        let det = open_detector(dir, weights, device)?;
        let failed = preload(&det)?;
        Ok((
            ModelSlot {
                current: RwLock::new(Arc::new(det)),
                registering: Mutex::new(()),
                weights: weights.map(Path::to_path_buf),
                device,
            },
            failed,
        ))
    }

    /// The detector to score the next batch with.
    pub fn current(&self) -> Arc<Detector> {
        // Only ever replaced whole: a poisoned lock still holds a complete detector.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Registers `class` from decoded images (in memory), then swaps the detector (module
    /// docs). Blocking: call it from a blocking thread.
    pub fn register(
        &self,
        class: &str,
        images: &[RgbImage],
    ) -> std::result::Result<ClassInfo, RegisterError> {
        let _guard = match self.registering.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(RegisterError::Busy),
        };
        let run = || -> Result<ClassInfo> {
            let dir = self.current().dir().to_path_buf();
            let mut det = open_detector(&dir, self.weights.as_deref(), self.device)?;
            let info = det.register_images(class, images)?;
            // The new detector serves every class at once, as the old one did.
            for (name, e) in preload(&det)? {
                eprintln!("warning: class '{name}' failed to load after registering: {e}");
            }
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(det);
            Ok(info)
        };
        run().map_err(RegisterError::Failed)
    }
}

fn open_detector(
    dir: &Path,
    weights: Option<&Path>,
    device: crate::detector::Device,
) -> Result<Detector> {
    let mut det = Detector::open(dir, weights)?;
    det.set_device(device)?;
    Ok(det)
}

/// Loads every registered class of `det` into its cache; returns those that failed.
fn preload(det: &Detector) -> Result<Vec<(String, Error)>> {
    let mut failed = Vec::new();
    for name in class_store::list(det.dir())? {
        if let Err(e) = det.class(&name) {
            failed.push((name, e));
        }
    }
    Ok(failed)
}

/// The request index of an in-memory registration image as `class.json` names it
/// (`<image 3>` -> 3), for outlier reports.
pub fn memory_index(path: &Path) -> Option<usize> {
    path.to_str()?
        .strip_prefix("<image ")?
        .strip_suffix('>')?
        .parse()
        .ok()
}
