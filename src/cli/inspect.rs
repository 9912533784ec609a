//! `pmad inspect --model DIR --class X [--out DIR] IMAGE_OR_DIR...`: one JSON line per image
//! (path, score, verdict) and, with `--out`, a heatmap overlay PNG per image.

use clap::Args;
use pmad::data::load_rgb;
use pmad::detector::Detector;
use pmad::detector::model_dir::ScoreKind;
use pmad::detector::pipeline::list_images;
use pmad::detector::scoring::AnomalyMap;
use pmad::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub class: String,
    /// Folder for heatmap overlays (`<folder>_<stem>_heatmap.png`).
    #[arg(long)]
    pub out: Option<PathBuf>,
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

/// Blue -> cyan -> yellow -> red ramp for t in [0, 1].
fn colormap(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let r = (1.5 - (4.0 * t - 3.0).abs()).clamp(0.0, 1.0);
    let g = (1.5 - (4.0 * t - 2.0).abs()).clamp(0.0, 1.0);
    let b = (1.5 - (4.0 * t - 1.0).abs()).clamp(0.0, 1.0);
    [r * 255.0, g * 255.0, b * 255.0]
}

/// The image at map size with the map blended on top. Colour scale: 0 at zero, full red at
/// twice the class threshold — fixed per class, so overlays are comparable across images.
fn write_overlay(
    img: &pmad::data::RgbImage,
    map: &AnomalyMap,
    threshold: f32,
    path: &Path,
) -> Result<()> {
    let s = map.size;
    let base = img.resize(s, s);
    let scale = if threshold.is_finite() && threshold > 0.0 {
        2.0 * threshold
    } else {
        map.score.max(1e-6)
    };
    let mut px = vec![0u8; s * s * 3];
    for i in 0..s * s {
        let t = map.values[i] / scale;
        let c = colormap(t);
        let alpha = 0.25 + 0.35 * t.clamp(0.0, 1.0);
        for ch in 0..3 {
            px[i * 3 + ch] =
                ((1.0 - alpha) * base.pixels[i * 3 + ch] as f32 + alpha * c[ch]).round() as u8;
        }
    }
    let buf = image::RgbImage::from_raw(s as u32, s as u32, px)
        .ok_or_else(|| Error::invalid("overlay buffer size"))?;
    let mut bytes = Vec::new();
    buf.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
    pmad::detector::model_dir::write_atomic(path, &bytes)
}

pub fn run(args: InspectArgs) -> Result<()> {
    let mut paths = Vec::new();
    for p in &args.inputs {
        if p.is_dir() {
            paths.extend(list_images(p)?);
        } else {
            paths.push(p.clone());
        }
    }
    if paths.is_empty() {
        return Err(Error::invalid("no images to inspect"));
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
    det.class(&args.class)?;
    if let Some(o) = &args.out {
        std::fs::create_dir_all(o).map_err(|e| Error::io(o, e))?;
    }
    // Batches of images: decoded in parallel, one backbone pass each.
    for chunk in paths.chunks(args.batch) {
        let imgs: Vec<pmad::data::RgbImage> = chunk
            .par_iter()
            .map(|p| load_rgb(p))
            .collect::<Result<_>>()?;
        let results = det.inspect_batch(&args.class, &imgs)?;
        for ((path, img), r) in chunk.iter().zip(&imgs).zip(results) {
            let mut line = serde_json::json!({
                "path": path.display().to_string(),
                "score": r.map.score,
                "threshold": r.threshold,
                "verdict": if r.anomalous { "anomalous" } else { "normal" },
            });
            if let Some(o) = &args.out {
                // `<folder>_<stem>`: test folders of one class reuse file names (000.png ...).
                let name = |p: Option<&std::ffi::OsStr>| {
                    p.map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default()
                };
                let hp = o.join(format!(
                    "{}_{}_heatmap.png",
                    name(path.parent().and_then(|p| p.file_name())),
                    name(path.file_stem())
                ));
                write_overlay(img, &r.map, r.threshold, &hp)?;
                line["heatmap"] = hp.display().to_string().into();
            }
            println!("{line}");
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
    Ok(())
}
