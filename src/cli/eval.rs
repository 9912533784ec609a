//! `pmad eval --model DIR --data ROOT --classes x,y [--layout L] [--json FILE] [--score S]
//! [--report DIR]`: per-class image AUROC, pixel AUROC, AUPRO, F1-max on each class's
//! labelled test set (pixel metrics "-" / null where the defective images have no masks),
//! and with `--report` a static HTML report of them (see `pmad::report`).

use clap::Args;
use pmad::data::Layout;
use pmad::data::dataset::ClassData;
use pmad::detector::Detector;
use pmad::detector::evaluate::{ClassReport, evaluate_class_detailed};
use pmad::detector::model_dir::{InferenceMask, ScoreKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// Comma-separated classes (each must be registered in the model).
    #[arg(long, value_delimiter = ',', required = true)]
    pub classes: Vec<String>,
    /// Dataset layout: mvtec | folder (DIR/good, DIR/bad, DIR/masks) | visa
    /// (split_csv/1cls.csv) | btad | auto (detected from the folder; the default).
    #[arg(long, default_value = "auto")]
    pub layout: pmad::data::LayoutChoice,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML report to this folder (index.html: per class the metrics, ROC / PRO
    /// curves, the score histogram and the worst cases with overlays). Static files only:
    /// open index.html in a browser. Replaces an older report there; refuses other folders
    /// that are not empty.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Patch score (default: the model's): distance | flow | flow-nll (proposal stage),
    /// product (full PMAD: token entropy x abnormality on proposal-masked patches), entropy,
    /// product-ce / cross-entropy (the release's own-token variant), abnormality (= distance:
    /// the proposal stage alone).
    #[arg(long)]
    pub score: Option<ScoreKind>,
    /// Image score for this run (ablation; default: the model's): max | top:Q (mean of the
    /// map's top Q fraction). Metrics only: the class thresholds stay those calibrated with
    /// the model's image score.
    #[arg(long)]
    pub image_score: Option<pmad::detector::scoring::ImageScore>,
    /// Re-score with this patch score (nn | reweighted[:B]) for an ablation; like
    /// --image-score, the verdict rates are then not computed.
    #[arg(long)]
    pub patch_score: Option<pmad::detector::reweight::PatchScore>,
    /// Which patches the ViT reconstructs (ablation): proposal | random | blockwise.
    #[arg(long, default_value = "proposal")]
    pub inference_mask: InferenceMask,
    /// Register any class that is not registered yet (from its train/good) before evaluating.
    #[arg(long)]
    pub register: bool,
    /// Where the backbone, the nearest-prototype search and the ViT run: cpu | cuda (needs a
    /// build with `--features cuda` and a GPU of compute capability 7.5+).
    #[arg(long, default_value = "cpu")]
    pub device: pmad::detector::Device,
    /// Number format of the GPU's GEMMs: f32 (the reference) | bf16 (tensor cores, f32
    /// accumulation; compute capability 8.0+; the ViT's linears and the backbone's 1x1 and
    /// im2col convs, everything else stays f32). CUDA only.
    #[arg(long, default_value = "f32")]
    pub precision: pmad::backend::Precision,
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Report {
    classes: BTreeMap<String, ClassReport>,
    /// Means over the classes; a pixel metric is `null` unless every class has it (a mean
    /// over some of the classes would read as one over all).
    mean: BTreeMap<String, Option<f64>>,
}

/// A metric for the table, "-" when not available (no masks).
pub fn metric(m: Option<f64>) -> String {
    m.map_or("-".into(), |v| format!("{v:.3}"))
}

/// A verdict rate for the table ("-" when not computed).
fn rate(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.3}")
    } else {
        "-".into()
    }
}

pub fn run(args: EvalArgs) -> pmad::Result<()> {
    // Check every class folder before any work.
    let layout = args.layout.resolve(&args.data, &args.classes)?;
    if args.register && layout == Layout::Folder {
        // Its good/ images are the test set's normal images: registering from them would
        // score the very images the class was learnt from.
        return Err(pmad::Error::invalid(
            "--register with a folder dataset would register from the normal images it then \
             evaluates; register from another folder first (`pmad register --layout folder`)",
        ));
    }
    if let Some(dir) = &args.report {
        pmad::report::check_destination(dir)?;
    }
    let datasets: Vec<ClassData> =
        pmad::data::LayoutChoice::Fixed(layout).open_all(&args.data, &args.classes, false)?;
    let mut det = Detector::open(&args.model, args.weights.as_deref())?;
    det.progress = Some(super::progress::bar_callback());
    det.inference_mask = args.inference_mask;
    if let Some(i) = args.image_score {
        det.config.map.image_score = i;
    }
    if let Some(p) = args.patch_score {
        det.config.map.patch_score = p;
    }
    det.set_backend(args.device, args.precision)?;
    let kind = args.score.unwrap_or(det.config.score);
    let mut report = Report {
        classes: BTreeMap::new(),
        mean: BTreeMap::new(),
    };
    let mut evaluations = Vec::new();
    for (i, data) in datasets.iter().enumerate() {
        // Only a class that is absent is registered here: a broken one is an error.
        if args.register && !pmad::detector::class_store::exists(&args.model, &data.name) {
            det.register(&data.name, &data.train)?;
        }
        // The report's worst cases are picked during the pass (a few maps kept, not all).
        let worst = if args.report.is_some() {
            pmad::report::WORST_CASES
        } else {
            0
        };
        let mut e = evaluate_class_detailed(&det, data, kind, worst)?;
        if args.image_score.is_some() || args.patch_score.is_some() {
            // The thresholds were calibrated with the model's image score: no verdict rates
            // for another one (null in the JSON).
            e.report.false_alarm_rate = f64::NAN;
            e.report.detection_rate = f64::NAN;
        }
        let r = &e.report;
        // The header once the first class succeeded: a failed run prints nothing.
        if i == 0 {
            say!(
                "{:<16} {:>9} {:>9} {:>7} {:>7} {:>9} {:>6} {:>6} {:>6} {:>8}",
                "class",
                "img_auroc",
                "pix_auroc",
                "aupro",
                "f1_max",
                "pix_f1max",
                "far",
                "det",
                "images",
                "seconds"
            );
        }
        say!(
            "{:<16} {:>9.3} {:>9} {:>7} {:>7.3} {:>9} {:>6} {:>6} {:>6} {:>8.1}",
            data.name,
            r.image_auroc,
            metric(r.pixel_auroc),
            metric(r.aupro),
            r.f1_max,
            metric(r.pixel_f1_max),
            rate(r.false_alarm_rate),
            rate(r.detection_rate),
            r.n_images,
            r.seconds
        );
        report.classes.insert(data.name.clone(), r.clone());
        if args.report.is_some() {
            evaluations.push(e);
        }
    }
    let n = report.classes.len() as f64;
    let mean = |f: fn(&ClassReport) -> Option<f64>| {
        let v: Option<Vec<f64>> = report.classes.values().map(f).collect();
        v.map(|v| v.iter().sum::<f64>() / n)
    };
    for (k, f) in [
        (
            "image_auroc",
            (|r: &ClassReport| Some(r.image_auroc)) as fn(&ClassReport) -> Option<f64>,
        ),
        ("pixel_auroc", |r| r.pixel_auroc),
        ("aupro", |r| r.aupro),
        ("f1_max", |r| Some(r.f1_max)),
        ("pixel_f1_max", |r| r.pixel_f1_max),
    ] {
        report.mean.insert(k.to_string(), mean(f));
    }
    let m = |k: &str| metric(report.mean.get(k).copied().flatten());
    say!(
        "{:<16} {:>9} {:>9} {:>7} {:>7} {:>9}",
        "mean",
        m("image_auroc"),
        m("pixel_auroc"),
        m("aupro"),
        m("f1_max"),
        m("pixel_f1_max")
    );
    if let Some(dir) = &args.report {
        let mask_name = format!("{:?}", args.inference_mask).to_lowercase();
        let info = [
            format!("model: {}", args.model.display()),
            format!("data: {} ({} layout)", args.data.display(), layout.name()),
            format!("score: {}, inference mask: {}", kind.name(), mask_name),
        ];
        let classes: Vec<(&str, _)> = datasets
            .iter()
            .map(|d| d.name.as_str())
            .zip(&evaluations)
            .collect();
        pmad::report::write_report(dir, &info, &args.data, &classes)?;
        say!("report: {}", dir.join("index.html").display());
    }
    if let Some(path) = &args.json {
        pmad::detector::model_dir::write_json(path, &report)?;
    }
    Ok(())
}
