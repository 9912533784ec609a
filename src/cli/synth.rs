//! `pmad synth --out DIR [--classes N] [--seed S] [--train N] [--test-good N] [--test-bad N]
//! [--size PX] [--layout mvtec|folder|visa|btad] [--force]`: writes a synthetic defect dataset
//! in the MVTec-AD layout or another one pmad reads (see `pmad::data::synth`). The defaults make a small set for quick experiments and tests:
//! 4 classes x (40 train + 10 good + 20 defective test images), 256x256.

use clap::Args;
use pmad::Result;
use pmad::data::layout::LayoutChoice;
use pmad::data::synth::{SynthConfig, generate_layout};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder (must not exist or be empty, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of classes, the first N of: fabric, cap, wood, nut, metal, tile, screw, pcb.
    #[arg(long, default_value_t = 4)]
    pub classes: usize,
    /// Random seed: the same seed writes the same files, byte for byte.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Normal training images per class.
    #[arg(long, default_value_t = 40)]
    pub train: usize,
    /// Normal test images per class.
    #[arg(long, default_value_t = 10)]
    pub test_good: usize,
    /// Defective test images per class (spread over the class's defect types).
    #[arg(long, default_value_t = 20)]
    pub test_bad: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Layout to write: mvtec | folder (per class CLASS/{good,bad,masks} to evaluate and
    /// CLASS-train/good to register from) | visa | btad.
    #[arg(long, default_value = "mvtec")]
    pub layout: LayoutChoice,
    /// Replace an existing dataset folder previously written by `pmad synth`.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let cfg = SynthConfig {
        classes: args.classes,
        seed: args.seed,
        train: args.train,
        test_good: args.test_good,
        test_bad: args.test_bad,
        size: args.size,
        force: args.force,
    };
    let start = Instant::now();
    let LayoutChoice::Fixed(layout) = args.layout else {
        return Err(pmad::Error::invalid(
            "--layout auto reads a dataset; synth writes one: choose mvtec | folder | visa | btad",
        ));
    };
    let summary = generate_layout(&args.out, &cfg, layout)?;
    for c in &summary.classes {
        let defects: Vec<String> = c
            .test_defects
            .iter()
            .map(|d| format!("{} {}", d.defect, d.count))
            .collect();
        let kind = if c.object { "object" } else { "texture" };
        say!(
            "{:<14} {:<7} train {}, test good {}, defects: {}",
            c.name,
            kind,
            c.train,
            c.test_good,
            if defects.is_empty() {
                "none".to_string()
            } else {
                defects.join(", ")
            }
        );
    }
    say!(
        "wrote {} images ({} classes, {}x{}, seed {}, {} layout) to {} in {:.2} s",
        summary.images(),
        summary.classes.len(),
        summary.size,
        summary.size,
        summary.seed,
        layout.name(),
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
