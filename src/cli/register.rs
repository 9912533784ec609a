//! `pmad register --model DIR --data ROOT --class X`: prototypes and a calibrated threshold
//! for class X from `ROOT/X/train/good`, with no retraining.

use clap::Args;
use pmad::data::dataset::ClassData;
use pmad::detector::Detector;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset root in the MVTec-AD layout.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub class: String,
    /// Fraction of patches the proposal stage masks for this class at inference (default:
    /// the model's). Choose it from normal images or domain knowledge — never test labels.
    #[arg(long)]
    pub mask_ratio: Option<f32>,
    /// Where the backbone, the nearest-prototype search and the ViT run: cpu | cuda (needs a
    /// build with `--features cuda` and an sm_90+ GPU).
    #[arg(long, default_value = "cpu")]
    pub device: pmad::detector::Device,
    /// Backbone weights (default: the fetched EfficientNet-Lite0).
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

pub fn run(args: RegisterArgs) -> pmad::Result<()> {
    let data = ClassData::open(&args.data, &args.class)?;
    let mut det = Detector::open(&args.model, args.weights.as_deref())?;
    det.set_device(args.device)?;
    det.progress = Some(super::progress::bar_callback());
    let t = std::time::Instant::now();
    let info = det.register_with_mask_ratio(&args.class, &data.train, args.mask_ratio)?;
    println!(
        "registered '{}': {} prototypes from {} normal images, threshold {:?} ({:.1} s)",
        info.name,
        info.n_prototypes,
        info.n_train_images,
        info.thresholds,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
