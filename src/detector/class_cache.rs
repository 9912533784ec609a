//! The class cache of a [`Detector`]: registered classes, loaded from the model directory on
//! first use (bank + search index) and shared as `Arc`s, so a re-registration swaps a class
//! while readers keep scoring the model they started with.

#![warn(missing_docs)]

use crate::backend::DeviceBank;
use crate::detector::class_store;
use crate::detector::model_dir::{self as md, ClassInfo};
use crate::detector::pipeline::Detector;
use crate::error::Result;
use crate::ops::nn_search::{BankIndex, IndexParams};
use std::sync::{Arc, OnceLock, PoisonError};

/// A registered class, loaded.
#[derive(Clone)]
pub struct ClassModel {
    /// The class's `class.json`: name, thresholds, calibration.
    pub info: ClassInfo,
    /// Prototype bank `[P, D]`.
    pub bank: Vec<f32>,
    /// The bank prepared for exact nearest-prototype search on the CPU (built at
    /// registration; its k-means centroids are saved beside the bank so loading skips
    /// k-means). A loaded class builds it on its first CPU search: a GPU backend scans the
    /// bank itself and never pays for it.
    index: LazyIndex,
    /// The normal image (in registration order) each prototype was taken from (stored beside
    /// the bank; `None` for classes registered by an older pmad): a recalibration (after
    /// `train` installed a flow or ViT) builds its fold banks from it, as `register` did.
    pub source_image: Option<Vec<u32>>,
    /// The bank's copy on the scoring device (uploaded on first use; empty on the CPU).
    pub(crate) on_device: DeviceBank,
}

/// A [`BankIndex`] built on first use from the bank and its stored centroids.
#[derive(Clone)]
struct LazyIndex {
    built: OnceLock<BankIndex>,
    /// The k-means centroids stored with the bank (`None`: older pmad; k-means runs).
    centroids: Option<Vec<f32>>,
}

impl ClassModel {
    /// A class whose search index is already built (registration, calibration folds).
    pub(crate) fn new(
        info: ClassInfo,
        bank: Vec<f32>,
        index: BankIndex,
        source_image: Option<Vec<u32>>,
    ) -> ClassModel {
        ClassModel {
            info,
            bank,
            index: LazyIndex {
                built: OnceLock::from(index),
                centroids: None,
            },
            source_image,
            on_device: DeviceBank::default(),
        }
    }

    /// The bank's exact-search index, built now if this is its first use (see the field).
    pub fn search_index(&self, dim: usize) -> &BankIndex {
        self.index
            .built
            .get_or_init(|| match &self.index.centroids {
                Some(c) => {
                    BankIndex::with_centroids(&self.bank, dim, c, IndexParams::default().proj_dim)
                }
                None => BankIndex::build(&self.bank, dim),
            })
    }

    /// The index if it has been built (a GPU-only class never builds one).
    pub fn built_index(&self) -> Option<&BankIndex> {
        self.index.built.get()
    }
}

impl Detector {
    /// Loads (on first use) and returns a registered class (checked: see
    /// `class_store::load`). The returned `Arc` stays valid while the class is re-registered.
    pub fn class(&self, class: &str) -> Result<Arc<ClassModel>> {
        // The map is only ever changed by single inserts, so a poisoned lock (a panic
        // elsewhere while it was held) still guards a consistent map.
        if let Some(m) = self
            .classes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(class)
        {
            return Ok(m.clone());
        }
        // Loaded without the lock held, so a slow load never blocks scoring of other
        // classes. Threads racing on the same unloaded class may each load it (a read-only
        // load of the same files: harmless); the first insert wins and everyone gets that
        // one `Arc`. Simpler than a per-class once-cell, and a failed load is not cached.
        md::check_class_name(class)?;
        let model = Arc::new(self.load_class(class)?);
        let mut map = self.classes.write().unwrap_or_else(PoisonError::into_inner);
        Ok(map.entry(class.to_string()).or_insert(model).clone())
    }
    /// Reads a stored class; its search index is built on the first CPU search.
    fn load_class(&self, class: &str) -> Result<ClassModel> {
        let stored = class_store::load(&self.dir, class, self.features.dim())?;
        Ok(ClassModel {
            info: stored.info,
            bank: stored.bank,
            index: LazyIndex {
                built: OnceLock::new(),
                centroids: stored.centroids,
            },
            source_image: stored.source_image,
            on_device: DeviceBank::default(),
        })
    }
    /// Puts `model` in the class cache, replacing the class's previous model.
    pub(crate) fn install_class(&mut self, model: ClassModel) {
        let map = self
            .classes
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(model.info.name.clone(), Arc::new(model));
    }
    /// Takes a class out of the cache (to change it and install it again).
    pub(crate) fn take_class(&mut self, class: &str) -> Option<Arc<ClassModel>> {
        let map = self
            .classes
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(class)
    }
}
