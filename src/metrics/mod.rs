//! Evaluation metrics of the anomaly detection field, computed exactly (no threshold binning).
//!
//! - [`auroc`]: area under the ROC curve (image level on image scores, pixel level on all pixels),
//!   with [`roc_curve`] for the curve itself;
//! - [`aupro`]: area under the per-region-overlap curve up to a false positive rate limit
//!   (MVTec AD, Bergmann et al. 2021), with [`pro_curve`] for the curve itself and
//!   [`aupro_with_curve`] for both in one sweep;
//! - [`f1_max`]: the best F1 over all thresholds (a reported number only, see its docs);
//! - [`label_components`]: 8-connected component labelling of a binary mask (for AUPRO).
//!
//! Conventions shared by all metrics: scores are `f32`, higher = more anomalous; labels are
//! `bool`, `true` = anomalous (positive). A threshold `t` predicts "anomalous" for every score
//! `>= t`, so equal scores are always admitted together: a group of tied scores moves a curve
//! by one step (a diagonal segment when the group holds both classes). NaN scores are an error;
//! `-0.0` and `+0.0` are the same score; infinities are ordinary (extreme) scores.
//!
//! Implementation: every metric sorts the scores once (O(n log n), parallel) and sweeps the
//! sorted order once. Each (score, payload) pair is packed into one `u64` whose integer order
//! is the score order, so the sort is a plain integer sort (see `sorted.rs`).

mod aupro;
mod auroc;
mod components;
mod f1_max;
mod sorted;

pub use aupro::{DEFAULT_MAX_FPR, aupro, aupro_with_curve, pro_curve};
pub use auroc::{auroc, roc_curve};
pub use components::{Components, label_components};
pub use f1_max::f1_max;
