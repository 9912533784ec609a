//! `pmad train --data ROOT --classes a,b,... --out MODEL_DIR`: creates a model directory,
//! registers the seen classes (their prototypes), and trains the ProtoFlow on residuals of
//! their normal patches.

use clap::Args;
use pmad::data::dataset::ClassData;
use pmad::detector::model_dir::{ModelConfig, ScoreKind};
use pmad::detector::train::{TrainOptions, TrainReport, train};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// Comma-separated seen classes.
    #[arg(long, value_delimiter = ',', required = true)]
    pub classes: Vec<String>,
    #[arg(long)]
    pub out: PathBuf,
    /// Default patch abnormality of the model.
    #[arg(long, default_value = "distance")]
    pub score: ScoreKind,
    /// Fraction of each class's normal patches kept as prototypes.
    #[arg(long, default_value_t = 0.1)]
    pub coreset_ratio: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Flow training epochs over the seen classes' held-out residuals (0: no flow).
    #[arg(long, default_value_t = 6)]
    pub flow_epochs: usize,
    /// Affine coupling blocks of the flow.
    #[arg(long, default_value_t = 4)]
    pub flow_blocks: usize,
    /// Hidden width of each coupling's MLP.
    #[arg(long, default_value_t = 256)]
    pub flow_hidden: usize,
    /// Peak learning rate of the flow (AdamW, cosine schedule with warm-up).
    #[arg(long, default_value_t = 1e-3)]
    pub flow_lr: f32,
}

pub fn run(args: TrainArgs) -> pmad::Result<()> {
    let datasets: Vec<ClassData> = args
        .classes
        .iter()
        .map(|c| ClassData::open(&args.data, c))
        .collect::<pmad::Result<_>>()?;
    let mut config = ModelConfig {
        score: args.score,
        ..ModelConfig::default()
    };
    config.coreset.ratio = args.coreset_ratio;
    config.coreset.seed = args.seed;
    let opts = TrainOptions {
        config,
        flow_epochs: args.flow_epochs,
        flow_blocks: args.flow_blocks,
        flow_hidden: args.flow_hidden,
        flow_lr: args.flow_lr,
        seed: args.seed,
    };
    let r = train(
        &args.data,
        &datasets,
        &args.out,
        &opts,
        args.weights.as_deref(),
        Some(super::progress::bar_callback()),
    )?;
    print_report(&r);
    println!("model written to {}", args.out.display());
    Ok(())
}

pub fn print_report(r: &TrainReport) {
    for (name, protos, images, secs) in &r.classes {
        println!("{name}: {protos} prototypes from {images} normal images ({secs:.1} s)");
    }
    if !r.flow_nll.is_empty() {
        let nll: Vec<f32> = r
            .flow_nll
            .iter()
            .map(|v| (v * 1000.0).round() / 1000.0)
            .collect();
        println!(
            "flow: {} residuals, NLL/dim per epoch {nll:?} ({:.1} s)",
            r.flow_residuals, r.flow_seconds
        );
    }
}
