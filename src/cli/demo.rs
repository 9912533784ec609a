//! `pmad demo`: the main job on an embedded default. Synthesizes a small defect dataset, trains
//! a model (prototypes, flow, visual tokens and the `tiny` masked-token ViT) on three seen
//! classes, registers an unseen class from its normal images only, evaluates all four with
//! the proposal-stage and full two-stage scores, writes an HTML evaluation report (the default
//! score) and heatmap overlays for the unseen class.

use clap::Args;
use pmad::data::dataset::ClassData;
use pmad::data::synth::{SynthConfig, generate};
use pmad::detector::Detector;
use pmad::detector::evaluate::evaluate_class_detailed;
use pmad::detector::model_dir::ScoreKind;
use pmad::detector::train::{ReconOptions, TrainOptions, train};
use pmad::models::efficientnet::default_weights_dir;
use pmad::recon::trainer::TrainConfig;
use pmad::{Error, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working folder (replaced if it holds an earlier demo).
    #[arg(long, default_value = "pmad-demo")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training epochs of the tiny ViT.
    #[arg(long, default_value_t = 8)]
    pub vit_epochs: usize,
}

const SEEN: [&str; 3] = ["synth_fabric", "synth_cap", "synth_wood"];
const UNSEEN: &str = "synth_nut";

pub fn run(args: DemoArgs) -> Result<()> {
    let start = Instant::now();
    let marker = args.out.join("demo.txt");
    if args.out.exists() {
        if !marker.is_file() {
            return Err(Error::invalid(format!(
                "{}: exists and is not a pmad demo folder; choose another --out",
                args.out.display()
            )));
        }
        std::fs::remove_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    std::fs::write(&marker, "made by `pmad demo`; safe to delete\n")
        .map_err(|e| Error::io(&marker, e))?;
    say!(
        "1/5 backbone: {}",
        pmad::weights::fetch_efficientnet_lite0(&default_weights_dir())?.display()
    );

    let data = args.out.join("data");
    let cfg = SynthConfig {
        classes: 4,
        seed: args.seed,
        ..SynthConfig::default()
    };
    let summary = generate(&data, &cfg)?;
    say!(
        "2/5 synthetic data: {} classes in {} ({} images each)",
        summary.classes.len(),
        data.display(),
        cfg.train + cfg.test_good + cfg.test_bad
    );

    let model = args.out.join("model");
    let seen: Vec<ClassData> = SEEN
        .iter()
        .map(|c| ClassData::open(&data, c))
        .collect::<Result<_>>()?;
    let opts = TrainOptions {
        seed: args.seed,
        recon: ReconOptions {
            preset: "tiny".into(),
            train: TrainConfig {
                epochs: args.vit_epochs,
                seed: args.seed,
                ..TrainConfig::default()
            },
            ..ReconOptions::default()
        },
        ..TrainOptions::default()
    };
    let report = train(
        &data,
        &seen,
        &model,
        &opts,
        None,
        Some(super::progress::bar_callback()),
    )?;
    say!("3/5 trained on seen classes {}:", SEEN.join(", "));
    super::train::print_report(&report);

    let mut det = Detector::open(&model, None)?;
    det.progress = Some(super::progress::bar_callback());
    let unseen = ClassData::open(&data, UNSEEN)?;
    let info = det.register(UNSEEN, &unseen.train)?;
    say!(
        "4/5 registered unseen class {UNSEEN}: {} prototypes from {} normal images, no retraining",
        info.n_prototypes,
        info.n_train_images
    );

    say!(
        "5/5 evaluation (cross-class: neither the flow nor the ViT saw {UNSEEN}; \
         product = full PMAD, token entropy x distance on proposal-masked patches)"
    );
    say!(
        "{:<14} {:<8} {:>9} {:>9} {:>7}",
        "class",
        "score",
        "img_auroc",
        "pix_auroc",
        "aupro"
    );
    // The report shows the model's default score, with its worst cases.
    let mut evaluations = Vec::new();
    for c in SEEN.iter().chain([UNSEEN].iter()) {
        let d = ClassData::open(&data, c)?;
        for kind in [ScoreKind::Distance, ScoreKind::FlowNll, ScoreKind::Product] {
            let for_report = kind == det.config.score;
            let worst = if for_report {
                pmad::report::WORST_CASES
            } else {
                0
            };
            let e = evaluate_class_detailed(&det, &d, kind, worst)?;
            let r = &e.report;
            let tag = if *c == UNSEEN { " (unseen)" } else { "" };
            say!(
                "{:<14} {:<8} {:>9.3} {:>9} {:>7}{tag}",
                c,
                kind.name(),
                r.image_auroc,
                super::eval::metric(r.pixel_auroc),
                super::eval::metric(r.aupro)
            );
            if for_report {
                evaluations.push((*c, e));
            }
        }
    }
    let report = args.out.join("report");
    let info = [
        format!("model: {} (pmad demo)", model.display()),
        format!("data: {} (synthetic)", data.display()),
        format!(
            "score: {}, inference mask: proposal",
            det.config.score.name()
        ),
    ];
    let classes: Vec<(&str, _)> = evaluations.iter().map(|(c, e)| (*c, e)).collect();
    pmad::report::write_report(&report, &info, &data, &classes)?;
    say!("evaluation report: {}", report.join("index.html").display());
    let heat = args.out.join("heatmaps");
    let defect_dir = unseen
        .test
        .iter()
        .find(|t| t.is_defective())
        .and_then(|t| t.path.parent().map(|p| p.to_path_buf()));
    if let Some(dir) = defect_dir {
        super::inspect::run(super::inspect::InspectArgs {
            fail_fast: true,
            model: model.clone(),
            class: UNSEEN.into(),
            out: Some(heat.clone()),
            weights: None,
            score: None,
            device: pmad::detector::Device::Cpu,
            precision: pmad::backend::Precision::F32,
            batch: pmad::detector::pipeline::BATCH,
            timings: false,
            save_map: false,
            map_format: None,
            save_mask: false,
            threshold: None,
            quantile: None,
            inputs: vec![dir],
        })?;
        say!("heatmaps of {UNSEEN} defects: {}", heat.display());
    }
    say!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
