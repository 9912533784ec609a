//! `pmad register --model DIR --data ROOT --class X [--layout L]`: prototypes and a
//! calibrated threshold for class X from its normal training images (`ROOT/X/train/good`;
//! a folder dataset's `DIR/good`), with no retraining.

use clap::Args;
use pmad::detector::Detector;
use pmad::detector::register::{OUTLIER_Z, RegisterOptions};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset root (a folder dataset: the class's own folder).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub class: String,
    /// Dataset layout: mvtec | folder (DIR/good, DIR/bad, DIR/masks) | visa
    /// (split_csv/1cls.csv) | btad | auto (detected from the folder; the default).
    #[arg(long, default_value = "auto")]
    pub layout: pmad::data::LayoutChoice,
    /// Fraction of patches the proposal stage masks for this class at inference (default:
    /// the model's). Choose it from normal images or domain knowledge — never test labels.
    #[arg(long)]
    pub mask_ratio: Option<f32>,
    /// Where the backbone, the nearest-prototype search and the ViT run: cpu | cuda (needs a
    /// build with `--features cuda` and a GPU of compute capability 7.5+).
    #[arg(long, default_value = "cpu")]
    pub device: pmad::detector::Device,
    /// Backbone weights (default: the fetched EfficientNet-Lite0).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Leave the normal images reported as outliers (warnings) out of the bank and the
    /// calibration.
    #[arg(long)]
    pub drop_outliers: bool,
    /// Augmentation candidates to try for this class (default: the model's, set by `pmad
    /// train --augment`): none | all | a list of hflip, vflip, rot90, shift. Each is kept only
    /// if the class's held-out normal images score lower with it (recorded in class.json).
    #[arg(long)]
    pub augment: Option<pmad::detector::augment::AugmentList>,
}

pub fn run(args: RegisterArgs) -> pmad::Result<()> {
    // Only the training images are read: the test set (and its masks) may be absent or
    // incomplete.
    let class = std::slice::from_ref(&args.class);
    let Some(data) = args.layout.open_all(&args.data, class, true)?.pop() else {
        return Err(pmad::Error::invalid("no class to register"));
    };
    let mut det = Detector::open(&args.model, args.weights.as_deref())?;
    det.set_device(args.device)?;
    det.progress = Some(super::progress::bar_callback());
    let t = std::time::Instant::now();
    let opts = RegisterOptions {
        mask_ratio: args.mask_ratio,
        drop_outliers: args.drop_outliers,
        augment: args.augment.map(|a| a.0),
    };
    let info = det.register_with(&args.class, &data.train, &opts)?.info;
    for o in &info.outliers {
        eprintln!(
            "warning: class '{}': {} looks unlike the other normal images (robust z {:.1} > \
             {OUTLIER_Z}); {}",
            info.name,
            o.path.display(),
            o.z,
            if o.dropped {
                "left out (--drop-outliers)"
            } else {
                "check it, or register with --drop-outliers"
            }
        );
    }
    let thresholds: Vec<String> = info
        .thresholds
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    say!(
        "registered '{}': {} prototypes from {} normal images, thresholds: {} ({:.1} s)",
        info.name,
        info.n_prototypes,
        info.n_train_images,
        thresholds.join(", "),
        t.elapsed().as_secs_f64()
    );
    if !info.augmentation.is_empty() {
        say!(
            "augmentation: {}",
            pmad::detector::augment::summary(&info.augmentation)
        );
    }
    Ok(())
}
