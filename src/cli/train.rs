//! `pmad train --data ROOT --classes a,b,... --out MODEL_DIR`: creates a model directory,
//! registers the seen classes (their prototypes), trains the ProtoFlow on residuals of their
//! normal patches, fits the visual-token codebook and trains the masked-token ViT. Stages can
//! be skipped (`--skip flow,tokenizer,vit`); `--resume` continues a stopped run.

use clap::Args;
use pmad::data::dataset::ClassData;
use pmad::detector::model_dir::{ModelConfig, ScoreKind};
use pmad::detector::train::{ReconOptions, Stages, TrainOptions, TrainReport, train};
use pmad::recon::trainer::TrainConfig;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// Comma-separated seen classes.
    #[arg(long, value_delimiter = ',', required = true)]
    pub classes: Vec<String>,
    /// Dataset layout: mvtec | folder (DIR/good, DIR/bad, DIR/masks) | visa
    /// (split_csv/1cls.csv) | btad | auto (detected from the folder; the default).
    #[arg(long, default_value = "auto")]
    pub layout: pmad::data::LayoutChoice,
    #[arg(long)]
    pub out: PathBuf,
    /// Default patch abnormality of the model.
    #[arg(long, default_value = "distance")]
    pub score: ScoreKind,
    /// How a map becomes the image score: max | top:Q (mean of the top Q fraction of the
    /// map's pixels; `top:0.01`, the default, raised image AUROC on every development class).
    #[arg(long, default_value = "top:0.01")]
    pub image_score: pmad::detector::scoring::ImageScore,
    /// Patch score behind the `distance` image score: nn (the nearest-prototype distance) |
    /// reweighted[:B] (PatchCore's Eq. 7 on the most abnormal patch, B = 9 neighbours).
    #[arg(long, default_value = "nn")]
    pub patch_score: pmad::detector::reweight::PatchScore,
    /// Few-shot registration: augmentation candidates each class tries at register (none |
    /// all | a list of hflip, vflip, rot90, shift); each is kept per class only if its
    /// held-out normal images score lower with it.
    #[arg(long, default_value = "none")]
    pub augment: pmad::detector::augment::AugmentList,
    /// Verdict threshold: this quantile of the class's out-of-fold normal image scores...
    #[arg(long, default_value_t = 0.99)]
    pub threshold_quantile: f32,
    /// ... and at least their median + Z * MAD / 0.6745 (a robust outlier cut-off; 0: off).
    #[arg(long, default_value_t = 3.5)]
    pub threshold_robust_z: f32,
    /// Fraction of each class's normal patches kept as prototypes.
    #[arg(long, default_value_t = 0.1)]
    pub coreset_ratio: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Backbone weights (default: weights/efficientnet_<backbone>.safetensors).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Which EfficientNet-Lite the features come from: lite0 (taps blocks.4 + blocks.10,
    /// 152-d), lite1 (blocks.6 + blocks.14, 152-d) or lite2 (blocks.6 + blocks.14, 168-d).
    /// Needs `pmad fetch-weights --backbone X`.
    #[arg(long, default_value = "lite0")]
    pub backbone: pmad::models::Backbone,
    /// Feature taps, comma-separated (default: the backbone's two, above): `stem`, `blocks.N`
    /// (a block's output), `blocks.N.expand` / `blocks.N.dw` (the wide activations after a
    /// block's expand / depthwise conv), each optionally projected to DIM dimensions by a
    /// fixed random Gaussian matrix, `NAME:DIM` (e.g. `blocks.4,blocks.10.dw:128`).
    #[arg(long, value_delimiter = ',')]
    pub taps: Vec<String>,
    /// Side the images are resized to before the backbone (default 224).
    #[arg(long, default_value_t = 224)]
    pub input_size: usize,
    /// Side of the local averaging window of the features (odd; 1: none).
    #[arg(long, default_value_t = 3)]
    pub pool: usize,
    /// Input normalisation: imagenet (the backbone's own) | per-image (then each image's
    /// channels standardised, so global brightness and contrast do not move the features) |
    /// both (the two views' features side by side: twice the dimension and backbone work).
    #[arg(long, default_value = "imagenet")]
    pub input_norm: pmad::detector::features::InputNorm,
    /// Flow training epochs over the seen classes' out-of-bank residuals (0: no flow).
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
    /// Stages to skip: any of flow, tokenizer, vit (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// ViT preset: tiny (tests), small (CPU default), base (the paper's ViT-B).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Visual-token vocabulary size (default: sized to the data; at most 8192).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Token ids made elsewhere (safetensors: one integer tensor [196] per image, named by
    /// the image path relative to --data) instead of our k-means codebook.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// What the ViT reads per patch: `pixels` (the paper: 16x16x3 patch embedding) or
    /// `features` (the frozen backbone's features pooled to the 14x14 grid, a CPU-sized
    /// variant: the ViT then only learns the context model).
    #[arg(long, default_value = "pixels", value_parser = ["pixels", "features"])]
    pub vit_input: String,
    /// ViT training epochs.
    #[arg(long, default_value_t = 20)]
    pub vit_epochs: usize,
    /// ViT batch size.
    #[arg(long, default_value_t = 8)]
    pub vit_batch: usize,
    /// ViT peak learning rate (AdamW, cosine with warm-up).
    #[arg(long)]
    pub vit_lr: Option<f32>,
    /// Fraction of patches masked while training the ViT.
    #[arg(long, default_value_t = 0.4)]
    pub train_mask_ratio: f32,
    /// Default fraction of patches the proposal stage masks at inference.
    #[arg(long, default_value_t = 0.3)]
    pub mask_ratio: f32,
    /// Write a ViT checkpoint every N steps (0: at each epoch's end).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue a stopped run in --out: finished stages are kept, the ViT resumes from its
    /// checkpoint and ends with the same weights as an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    /// Read flags from a TOML file (keys are these flags without dashes, e.g.
    /// `coreset-ratio = 0.1`, `classes = ["a", "b"]`); flags on the command line override it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (file, command line and defaults) as TOML and exit
    /// without training.
    #[arg(long)]
    pub print_config: bool,
}

pub fn run(args: TrainArgs, matches: &clap::ArgMatches) -> pmad::Result<()> {
    if args.print_config {
        say!("{}", super::config::print(matches).trim_end());
        return Ok(());
    }
    let datasets: Vec<ClassData> = args.layout.open_all(&args.data, &args.classes, false)?;
    let mut features = pmad::detector::features::FeatureSpec::for_backbone(args.backbone);
    if !args.taps.is_empty() {
        features.taps = args.taps.clone();
    }
    features.input_size = args.input_size;
    features.pool = args.pool;
    features.input_norm = args.input_norm;
    let mut config = ModelConfig {
        score: args.score,
        features,
        ..ModelConfig::default()
    };
    // The same checks as a model.json read back, before any work (an error names the flag's
    // field, e.g. `features.input_size`).
    config.check(std::path::Path::new("--taps/--input-size/--pool"))?;
    config.coreset.ratio = args.coreset_ratio;
    config.threshold_quantile = args.threshold_quantile;
    config.threshold_robust_z = args.threshold_robust_z;
    config.map.image_score = args.image_score;
    config.map.patch_score = args.patch_score;
    config.augment = args.augment.0;
    config.coreset.seed = args.seed;
    let mut stages = Stages::default();
    for s in &args.skip {
        match s.as_str() {
            "flow" => stages.flow = false,
            "tokenizer" => stages.tokenizer = false,
            "vit" => stages.vit = false,
            other => {
                return Err(pmad::Error::invalid(format!(
                    "--skip: unknown stage '{other}' (flow | tokenizer | vit)"
                )));
            }
        }
    }
    if !stages.tokenizer && stages.vit && args.tokens.is_none() {
        return Err(pmad::Error::invalid(
            "--skip tokenizer needs --tokens FILE (the ViT trains on token ids)",
        ));
    }
    let mut train_cfg = TrainConfig {
        epochs: args.vit_epochs,
        batch_size: args.vit_batch,
        checkpoint_every: args.checkpoint_every,
        seed: args.seed,
        ..TrainConfig::default()
    };
    if let Some(lr) = args.vit_lr {
        train_cfg.peak_lr = lr;
    }
    let opts = TrainOptions {
        config,
        stages,
        flow_epochs: args.flow_epochs,
        flow_blocks: args.flow_blocks,
        flow_hidden: args.flow_hidden,
        flow_lr: args.flow_lr,
        recon: ReconOptions {
            preset: args.preset.clone(),
            vocab: args.vocab,
            tokens_file: args.tokens.clone(),
            train_mask_ratio: args.train_mask_ratio,
            mask_ratio: args.mask_ratio,
            feature_input: args.vit_input == "features",
            train: train_cfg,
            ..ReconOptions::default()
        },
        resume: args.resume,
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
    say!("model written to {}", args.out.display());
    Ok(())
}

pub fn print_report(r: &TrainReport) {
    for (name, protos, images, secs) in &r.classes {
        say!("{name}: {protos} prototypes from {images} normal images ({secs:.1} s)");
    }
    for (class, o) in &r.outliers {
        eprintln!(
            "warning: class '{class}': {} looks unlike the other normal images (robust z \
             {:.1}); check it (`pmad register --drop-outliers` leaves such images out)",
            o.path.display(),
            o.z
        );
    }
    if !r.flow_nll.is_empty() {
        let nll: Vec<f32> = r
            .flow_nll
            .iter()
            .map(|v| (v * 1000.0).round() / 1000.0)
            .collect();
        say!(
            "flow: {} residuals, NLL/dim per epoch {nll:?} ({:.1} s)",
            r.flow_residuals,
            r.flow_seconds
        );
    }
    if r.vocab > 0 {
        say!(
            "tokenizer: {} visual tokens ({:.1} s)",
            r.vocab,
            r.tokenizer_seconds
        );
    }
    if !r.vit_loss.is_empty() {
        let loss: Vec<f32> = r
            .vit_loss
            .iter()
            .map(|v| (v * 1000.0).round() / 1000.0)
            .collect();
        say!(
            "vit: masked-token CE per epoch {loss:?}, {:.2} images/s ({:.1} s)",
            r.vit_images_per_s,
            r.vit_seconds
        );
    }
}
