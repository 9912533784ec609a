//! `pmad inspect --model DIR --class X [--out DIR] IMAGE_OR_DIR...`: one JSON line per image
//! (path, score, threshold, verdict) and, with `--out`, a heatmap overlay PNG per image at the
//! image's own size; `--save-map` adds the raw anomaly map (16-bit PNG or `.npy`),
//! `--save-mask` a binary defect mask at the class's calibrated pixel threshold with its
//! area and regions in the JSON line; `--threshold`/`--quantile` override the image
//! threshold for the run. An image that cannot be read or scored gets
//! `{"path": ..., "error": ...}` instead, the others are still scored, and the run exits
//! non-zero at the end (`--fail-fast`: at once). An image's output files are all encoded
//! before any is written, each is written atomically, and a failed write removes the ones
//! of that image already written: no partial outputs.

use clap::Args;
use pmad::data::{RgbImage, load_rgb};
use pmad::detector::Detector;
use pmad::detector::model_dir::{ClassInfo, ScoreKind};
use pmad::detector::outputs;
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
    /// build with `--features cuda` and a GPU of compute capability 7.5+).
    #[arg(long, default_value = "cpu")]
    pub device: pmad::detector::Device,
    /// Number format of the GPU's GEMMs: f32 (the reference) | bf16 (tensor cores, f32
    /// accumulation; compute capability 8.0+; the ViT's linears and the backbone's 1x1 and
    /// im2col convs, everything else stays f32). CUDA only.
    #[arg(long, default_value = "f32")]
    pub precision: pmad::backend::Precision,
    /// Images per batch (decoded in parallel, one backbone / search / ViT pass each).
    #[arg(long, default_value_t = pmad::detector::pipeline::BATCH)]
    pub batch: usize,
    /// Print the images/s of the whole run (decode, scoring, output) to stderr at the end.
    #[arg(long)]
    pub timings: bool,
    /// Also write each image's raw anomaly map at the image's size beside its overlay
    /// (needs --out): `<stem>_map.png` or `<stem>_map.npy`, see --map-format.
    #[arg(long)]
    pub save_map: bool,
    /// png16 (default): 16-bit grayscale PNG, `map = map_offset + png / 65535 * map_scale`
    /// (both in the JSON line; map_scale is the image's map maximum, map_offset 0 unless the
    /// map has negative values); npy: float32 little-endian NumPy array of shape [h, w].
    #[arg(long, requires = "save_map")]
    pub map_format: Option<MapFormat>,
    /// Also write each image's binary defect mask `<stem>_mask.png` (255 = defect) at the
    /// image's size (needs --out): map pixels above the class's pixel threshold, calibrated
    /// at register from its normal images. The JSON line gains `defect_area` and `regions`.
    #[arg(long)]
    pub save_mask: bool,
    /// Image threshold for this run instead of the class's calibrated one (a finite number).
    #[arg(long, conflicts_with = "quantile", allow_hyphen_values = true)]
    pub threshold: Option<f32>,
    /// Image threshold for this run: quantile Q in (0, 1] of the class's stored out-of-fold
    /// normal image scores (the calibrated threshold is the model's threshold_quantile).
    #[arg(long)]
    pub quantile: Option<f32>,
    /// Images, or folders of images.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Most regions listed in a JSON line (largest first; `regions_total` counts them all): a
/// mask of scattered specks would otherwise make lines of thousands of boxes.
pub const MAX_REGIONS: usize = 32;

/// How `--save-map` stores the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapFormat {
    Png16,
    Npy,
}

impl std::str::FromStr for MapFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "png16" => Ok(MapFormat::Png16),
            "npy" => Ok(MapFormat::Npy),
            _ => Err(format!("unknown map format '{s}' (png16 | npy)")),
        }
    }
}

/// What every image's JSON line and files need besides the image and its scores: decided
/// once per run, before any image is read.
struct Plan<'a> {
    /// `(--out, the inputs' common folder)`.
    out: Option<(&'a Path, &'a Path)>,
    /// The image threshold of this run and where it came from.
    threshold: f32,
    threshold_source: &'static str,
    map_format: Option<MapFormat>,
    /// The class's pixel threshold, when masks are asked for.
    pixel_threshold: Option<f32>,
}

/// The image threshold of this run: `--threshold`, `--quantile` of the class's normal scores,
/// or the calibrated one; with where it came from.
fn run_threshold(
    args: &InspectArgs,
    info: &ClassInfo,
    kind: ScoreKind,
    info_path: &Path,
) -> Result<(f32, &'static str)> {
    let calibrated = info.threshold(kind, info_path)?;
    if let Some(x) = args.threshold {
        if !x.is_finite() {
            return Err(Error::invalid(format!(
                "--threshold {x}: the threshold must be a finite number"
            )));
        }
        return Ok((x, "override"));
    }
    if let Some(q) = args.quantile {
        if !(q > 0.0 && q <= 1.0) {
            return Err(Error::invalid(format!(
                "--quantile {q}: the quantile must lie in (0, 1]"
            )));
        }
        let scores = info
            .normal_scores
            .get(kind.name())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::format(
                    info_path,
                    format!(
                        "field 'normal_scores.{}': missing: class '{}' has no stored normal \
                         scores for --quantile; register it again with this pmad",
                        kind.name(),
                        info.name
                    ),
                )
            })?;
        return Ok((pmad::detector::scoring::quantile(scores, q), "quantile"));
    }
    Ok((calibrated, "calibrated"))
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
    output_path(out, root, image, "heatmap.png")
}

/// Where the output `<stem>_<suffix>` of `image` goes under `out` (the folder and naming of
/// [`heatmap_path`], which is `suffix` `heatmap.png`): `map.png`, `map.npy`, `mask.png`.
pub fn output_path(out: &Path, root: &Path, image: &Path, suffix: &str) -> PathBuf {
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
        format!("{stem}_{suffix}")
    } else {
        format!("{stem}_{ext}_{suffix}")
    };
    out.join(rel_dir).join(name)
}

/// One image's JSON line: its verdict and, with `--out`, its output files (written here).
fn result_line(
    path: &Path,
    img: &pmad::data::RgbImage,
    r: &pmad::detector::Inspection,
    plan: &Plan,
) -> Result<serde_json::Value> {
    let anomalous = r.map.score > plan.threshold;
    let mut line = serde_json::json!({
        "path": path.display().to_string(),
        "score": r.map.score,
        "threshold": plan.threshold,
        "threshold_source": plan.threshold_source,
        "verdict": if anomalous { "anomalous" } else { "normal" },
    });
    let Some((out, root)) = plan.out else {
        return Ok(line);
    };
    // The image score is checked upstream; a NaN pixel below a finite max would not be.
    if r.map.values.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{}: the anomaly map has non-finite values",
            path.display()
        )));
    }
    let (w, h) = (img.width, img.height);
    let up = outputs::upsample_map(&r.map, w, h);
    // Every file of the image is encoded before any is written.
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let heatmap = heatmap_path(out, root, path);
    files.push((
        heatmap.clone(),
        pmad::report::overlay::encode_png(
            &pmad::report::overlay::blend(img, &up, r.threshold, r.map.score),
            &heatmap,
        )?,
    ));
    line["heatmap"] = heatmap.display().to_string().into();
    match plan.map_format {
        Some(MapFormat::Png16) => {
            let p = outputs::png16_map(&up, w, h)?;
            let mp = output_path(out, root, path, "map.png");
            line["map"] = mp.display().to_string().into();
            line["map_scale"] = p.scale.into();
            line["map_offset"] = p.offset.into();
            files.push((mp, p.bytes));
        }
        Some(MapFormat::Npy) => {
            let mp = output_path(out, root, path, "map.npy");
            line["map"] = mp.display().to_string().into();
            files.push((mp, outputs::npy_bytes(&up, w, h)?));
        }
        None => {}
    }
    if let Some(pt) = plan.pixel_threshold {
        let mask = outputs::defect_mask(&up, pt);
        let regions = outputs::regions(&mask, w, h)?;
        let pixels: usize = regions.iter().map(|r| r.pixels).sum();
        let mp = output_path(out, root, path, "mask.png");
        line["mask"] = mp.display().to_string().into();
        line["pixel_threshold"] = pt.into();
        line["defect_area"] = serde_json::json!({
            "pixels": pixels,
            "fraction": pixels as f64 / (w * h) as f64,
        });
        line["regions"] = regions
            .iter()
            .take(MAX_REGIONS)
            .map(|r| serde_json::json!(r.bbox))
            .collect::<Vec<_>>()
            .into();
        line["regions_total"] = regions.len().into();
        files.push((mp, outputs::mask_png(&mask, w, h)?));
    }
    write_all(&files)?;
    Ok(line)
}

/// Writes every `(path, bytes)` atomically; if one fails, removes those already written (so
/// an image has all its outputs or none) and returns the error, which names the file.
fn write_all(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    for (i, (p, bytes)) in files.iter().enumerate() {
        let res = match p.parent() {
            Some(d) => std::fs::create_dir_all(d).map_err(|e| Error::io(d, e)),
            None => Ok(()),
        }
        .and_then(|_| pmad::detector::model_dir::write_atomic(p, bytes));
        if let Err(e) = res {
            for (done, _) in &files[..i] {
                let _ = std::fs::remove_file(done);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn error_line(path: &Path, e: &Error) -> serde_json::Value {
    serde_json::json!({"path": path.display().to_string(), "error": e.to_string()})
}

/// Scores one batch of decoded images (`decoded[i]` is `chunk[i]`'s image, or why it could
/// not be read) and prints a line per image; returns how many failed. With `--fail-fast` the
/// first failure is returned instead.
fn score_batch(
    det: &mut Detector,
    args: &InspectArgs,
    chunk: &[PathBuf],
    decoded: Vec<Result<RgbImage>>,
    want_maps: bool,
    plan: &Plan,
) -> Result<usize> {
    // Each input is an index into the decoded images, or why it could not be decoded.
    let mut imgs = Vec::with_capacity(chunk.len());
    let slots: Vec<Result<usize>> = decoded
        .into_iter()
        .map(|d| {
            d.map(|img| {
                imgs.push(img);
                imgs.len() - 1
            })
        })
        .collect();
    // One pass for the batch; if it fails, each image alone (so one bad image only costs its
    // own verdict).
    let mut scored: Vec<Option<Result<pmad::detector::Inspection>>> =
        match det.inspect_batch_with(&args.class, &imgs, want_maps) {
            Ok(v) => v.into_iter().map(|r| Some(Ok(r))).collect(),
            Err(_) if imgs.len() > 1 => imgs
                .iter()
                .map(|img| {
                    let one = std::slice::from_ref(img);
                    Some(
                        det.inspect_batch_with(&args.class, one, want_maps)
                            .map(|mut v| v.remove(0)),
                    )
                })
                .collect(),
            Err(e) => vec![Some(Err(e))],
        };
    let mut failed = 0;
    for (path, slot) in chunk.iter().zip(slots) {
        let line = slot.and_then(|i| {
            let r = scored[i].take().expect("one result per decoded image")?;
            result_line(path, &imgs[i], &r, plan)
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
    Ok(failed)
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
    det.set_backend(args.device, args.precision)?;
    if let Some(kind) = args.score {
        // For this run only (model.json keeps its default).
        det.config.score = kind;
    }
    if (args.save_map || args.save_mask) && args.out.is_none() {
        return Err(Error::invalid(
            "--save-map and --save-mask write files beside the overlays: give --out DIR",
        ));
    }
    // A class that cannot give verdicts (missing, broken, no threshold for this score) or
    // the asked-for outputs (no pixel threshold for masks) fails before any image is read
    // or any output folder is made.
    let kind = det.config.score;
    let info_path = pmad::detector::class_store::info_path(&args.model, &args.class);
    let load_start = std::time::Instant::now();
    let model = det.class(&args.class)?;
    if args.timings {
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        let dim = det.features().dim();
        eprintln!(
            "inspect: class {} loaded in {:.3} s: bank {} x {dim} ({:.1} MiB)",
            args.class,
            load_start.elapsed().as_secs_f64(),
            model.bank.len() / dim,
            mib(model.bank.len() * std::mem::size_of::<f32>()),
        );
    }
    let info = &model.info;
    let (threshold, threshold_source) = run_threshold(&args, info, kind, &info_path)?;
    let pixel_threshold = if args.save_mask {
        Some(info.pixel_threshold(kind, &info_path)?)
    } else {
        None
    };
    if let Some(o) = &args.out {
        std::fs::create_dir_all(o).map_err(|e| Error::io(o, e))?;
    }
    let root = common_root(&paths);
    let plan = Plan {
        out: args.out.as_deref().map(|o| (o, root.as_path())),
        threshold,
        threshold_source,
        map_format: args
            .save_map
            .then(|| args.map_format.unwrap_or(MapFormat::Png16)),
        pixel_threshold,
    };
    // The maps only feed the files of `--out`: without it a GPU sends down only the scores.
    let want_maps = plan.out.is_some();
    let bytes_before = det.device_bytes_copied();
    // Batches of images, one backbone pass each. A decoder thread reads and decodes the next
    // batch (in parallel) while this one is scored: a channel of one batch keeps it at most
    // one batch ahead. An image that cannot be read or scored gets an error line; the others
    // are still scored.
    let batches = std::thread::scope(|scope| -> Result<usize> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Result<RgbImage>>>(1);
        let (paths, batch) = (&paths, args.batch);
        scope.spawn(move || {
            for chunk in paths.chunks(batch) {
                let decoded = chunk.par_iter().map(|p| load_rgb(p)).collect();
                // The receiver is gone when the loop below stopped early (--fail-fast).
                if tx.send(decoded).is_err() {
                    break;
                }
            }
        });
        let mut failed = 0usize;
        for chunk in paths.chunks(batch) {
            let decoded = rx
                .recv()
                .map_err(|_| Error::invalid("inspect: the image decoder thread stopped early"))?;
            failed += score_batch(&mut det, &args, chunk, decoded, want_maps, &plan)?;
        }
        Ok(failed)
    });
    let failed = batches?;
    if args.timings {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "inspect: {} images, batch {}, device {} ({}), {secs:.2} s, {:.2} images/s",
            paths.len(),
            args.batch,
            args.device.name(),
            det.precision().name(),
            paths.len() as f64 / secs
        );
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        match model.built_index() {
            Some(ix) => eprintln!(
                "inspect: search index {} clusters ({:.1} MiB), built in {:.3} s on the first \
                 CPU search",
                ix.num_clusters(),
                mib(ix.memory_bytes()),
                ix.build_time().as_secs_f64(),
            ),
            None => eprintln!("inspect: no search index built (the GPU scans the bank)"),
        }
        if let (Some((up0, down0)), Some((up1, down1))) = (bytes_before, det.device_bytes_copied())
        {
            let n = paths.len().max(1) as f64;
            eprintln!(
                "inspect: host->device {:.0} B/image, device->host {:.0} B/image (class bank \
                 and codebook uploads included, once per class)",
                (up1 - up0) as f64 / n,
                (down1 - down0) as f64 / n,
            );
        }
    }
    if failed > 0 {
        return Err(Error::invalid(format!(
            "{failed} of {} images could not be inspected (see their \"error\" lines)",
            paths.len()
        )));
    }
    Ok(())
}
