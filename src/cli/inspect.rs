//! `pmad inspect --model DIR --class X [--out DIR] IMAGE_OR_DIR...`: one JSON line per image
//! (path, score, threshold, verdict) and, with `--out`, a heatmap overlay PNG per image. An
//! image that cannot be read or scored gets `{"path": ..., "error": ...}` instead, the others
//! are still scored, and the run exits non-zero at the end (`--fail-fast`: at once).

use clap::Args;
use pmad::data::load_rgb;
use pmad::detector::Detector;
use pmad::detector::model_dir::ScoreKind;
use pmad::detector::pipeline::list_images;
use pmad::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub class: String,
    /// Folder for heatmap overlays: each image's path below the folder common to all inputs
    /// is mirrored under it (`a/good/000.png b/good/000.png` -> `OUT/a/good/000_heatmap.png`,
    /// `OUT/b/good/000_heatmap.png`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stop at the first image that cannot be read or scored (default: report it as a JSON
    /// error line, score the rest, exit non-zero at the end).
    #[arg(long)]
    pub fail_fast: bool,
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Score to use (default: the model's); e.g. `product` for full two-stage PMAD.
    #[arg(long)]
    pub score: Option<ScoreKind>,
    /// Where the backbone, the nearest-prototype search and the ViT run: cpu | cuda (needs a
    /// build with `--features cuda` and an sm_90+ GPU).
    #[arg(long, default_value = "cpu")]
    pub device: pmad::detector::Device,
    /// Images per batch (decoded in parallel, one backbone / search / ViT pass each).
    #[arg(long, default_value_t = pmad::detector::pipeline::BATCH)]
    pub batch: usize,
    /// Print the images/s of the whole run (decode, scoring, output) to stderr at the end.
    #[arg(long)]
    pub timings: bool,
    /// Images, or folders of images.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Every image to inspect, with the relative path its outputs mirror under `--out`.
/// Folders are walked recursively (sorted), so `inspect data/bottle/test` takes every
/// defect folder.
fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk_images(p, &mut paths)?;
        } else {
            paths.push(p.clone());
        }
    }
    Ok(paths)
}

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.extend(list_images(dir)?);
    let mut sub: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sub.sort();
    for d in sub {
        walk_images(&d, out)?;
    }
    Ok(())
}

/// The deepest folder holding every image (absolute), so outputs can mirror the images'
/// paths below it.
pub fn common_root(images: &[PathBuf]) -> PathBuf {
    let abs: Vec<PathBuf> = images
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let mut root = abs
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for p in &abs[1.min(abs.len())..] {
        while !p.starts_with(&root) {
            if !root.pop() {
                break;
            }
        }
    }
    root
}

/// Where the heatmap of `image` goes under `out`: its path below `root` (see
/// [`common_root`]) mirrored, with `<stem>_heatmap.png` as the file name
/// (`<stem>_<ext>_heatmap.png` for non-PNG inputs, so `a.png` and `a.jpg` differ). Distinct
/// inputs get distinct names: `a/good/000.png` and `b/good/000.png` go to
/// `OUT/a/good/000_heatmap.png` and `OUT/b/good/000_heatmap.png`.
pub fn heatmap_path(out: &Path, root: &Path, image: &Path) -> PathBuf {
    let abs = std::path::absolute(image).unwrap_or_else(|_| image.to_path_buf());
    let rel_dir = abs
        .parent()
        .and_then(|d| d.strip_prefix(root).ok())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let ext = image
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = if ext == "png" {
        format!("{stem}_heatmap.png")
    } else {
        format!("{stem}_{ext}_heatmap.png")
    };
    out.join(rel_dir).join(name)
}

/// One image's JSON line: its verdict, or what went wrong with it.
fn result_line(
    path: &Path,
    img: &pmad::data::RgbImage,
    r: &pmad::detector::Inspection,
    out: Option<(&Path, &Path)>,
) -> Result<serde_json::Value> {
    let mut line = serde_json::json!({
        "path": path.display().to_string(),
        "score": r.map.score,
        "threshold": r.threshold,
        "verdict": if r.anomalous { "anomalous" } else { "normal" },
    });
    if let Some((o, root)) = out {
        let hp = heatmap_path(o, root, path);
        if let Some(d) = hp.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        pmad::report::overlay::write_overlay(img, &r.map, r.threshold, &hp)?;
        line["heatmap"] = hp.display().to_string().into();
    }
    Ok(line)
}

fn error_line(path: &Path, e: &Error) -> serde_json::Value {
    serde_json::json!({"path": path.display().to_string(), "error": e.to_string()})
}

pub fn run(args: InspectArgs) -> Result<()> {
    let paths = collect_inputs(&args.inputs)?;
    if paths.is_empty() {
        return Err(Error::invalid(format!(
            "no images (png/jpg/jpeg) to inspect in {}",
            args.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if args.batch == 0 {
        return Err(Error::invalid("--batch must be at least 1"));
    }
    let start = std::time::Instant::now();
    let mut det = Detector::open(&args.model, args.weights.as_deref())?;
    det.set_device(args.device)?;
    if let Some(kind) = args.score {
        // For this run only (model.json keeps its default).
        det.config.score = kind;
    }
    // A class that cannot give verdicts (missing, broken, no threshold for this score)
    // fails before any image is read.
    let kind = det.config.score;
    let info_path = pmad::detector::class_store::info_path(&args.model, &args.class);
    det.class(&args.class)?.info.threshold(kind, &info_path)?;
    if let Some(o) = &args.out {
        std::fs::create_dir_all(o).map_err(|e| Error::io(o, e))?;
    }
    let root = common_root(&paths);
    let out = args.out.as_deref().map(|o| (o, root.as_path()));
    let mut failed = 0usize;
    // Batches of images: decoded in parallel, one backbone pass each. An image that cannot
    // be read or scored gets an error line; the others are still scored.
    for chunk in paths.chunks(args.batch) {
        // Each input is an index into the decoded images, or why it could not be decoded.
        let mut imgs = Vec::with_capacity(chunk.len());
        let slots: Vec<Result<usize>> = chunk
            .par_iter()
            .map(|p| load_rgb(p))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|d| {
                d.map(|img| {
                    imgs.push(img);
                    imgs.len() - 1
                })
            })
            .collect();
        // One pass for the batch; if it fails, each image alone (so one bad image only
        // costs its own verdict).
        let mut scored: Vec<Option<Result<pmad::detector::Inspection>>> =
            match det.inspect_batch(&args.class, &imgs) {
                Ok(v) => v.into_iter().map(|r| Some(Ok(r))).collect(),
                Err(_) if imgs.len() > 1 => imgs
                    .iter()
                    .map(|img| Some(det.inspect_image(&args.class, img)))
                    .collect(),
                Err(e) => vec![Some(Err(e))],
            };
        for (path, slot) in chunk.iter().zip(slots) {
            let line = slot.and_then(|i| {
                let r = scored[i].take().expect("one result per decoded image")?;
                result_line(path, &imgs[i], &r, out)
            });
            match line {
                Ok(l) => say!("{l}"),
                Err(e) => {
                    if args.fail_fast {
                        return Err(e);
                    }
                    failed += 1;
                    say!("{}", error_line(path, &e));
                }
            }
        }
    }
    if args.timings {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "inspect: {} images, batch {}, device {}, {secs:.2} s, {:.2} images/s",
            paths.len(),
            args.batch,
            args.device.name(),
            paths.len() as f64 / secs
        );
    }
    if failed > 0 {
        return Err(Error::invalid(format!(
            "{failed} of {} images could not be inspected (see their \"error\" lines)",
            paths.len()
        )));
    }
    Ok(())
}
