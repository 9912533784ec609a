//! The `pmad` command line: one file per verb. Each verb parses its own arguments (clap) and
//! calls the library; nothing here computes anything the library API cannot.

#[macro_use]
pub mod output;
pub mod bench;
pub mod classify;
pub mod config;
pub mod demo;
pub mod eval;
pub mod fetch_weights;
pub mod import_torch;
pub mod inspect;
pub mod progress;
pub mod register;
pub mod serve;
pub mod synth;
pub mod train;

use pmad::models::Backbone;
use pmad::models::efficientnet::default_weights_dir;
use std::path::PathBuf;

/// The backbone weights file: an explicit `--weights` path, or the default folder's file.
pub fn backbone_path(explicit: Option<PathBuf>) -> PathBuf {
    backbone_path_for(explicit, Backbone::Lite0)
}

/// [`backbone_path`] for a given variant.
pub fn backbone_path_for(explicit: Option<PathBuf>, backbone: Backbone) -> PathBuf {
    explicit.unwrap_or_else(|| default_weights_dir().join(backbone.weights_file()))
}

/// Fails with a hint to run `pmad fetch-weights --backbone X` when the backbone file is missing.
pub fn require_backbone_for(
    explicit: Option<PathBuf>,
    backbone: Backbone,
) -> pmad::Result<PathBuf> {
    let p = backbone_path_for(explicit, backbone);
    if !p.exists() {
        return Err(pmad::Error::WeightsMissing {
            path: p,
            what: "backbone weights".to_string(),
            hint: format!("pmad fetch-weights --backbone {backbone}"),
        });
    }
    Ok(p)
}
