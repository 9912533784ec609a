//! Embedding pmad in a program: register a class from images held in memory, then inspect a
//! raw camera-style pixel buffer (BGR, padded rows) and print the result as JSON.
//!
//! ```text
//! cargo run --release --example inspect                      # a demo model on synthetic data
//! cargo run --release --example inspect -- MODEL_DIR CLASS IMAGE.png
//! ```
//!
//! The backbone weights are found as by the `pmad` binary (`$PMAD_WEIGHTS_DIR`, the
//! checkout's `weights/`, then `~/.cache/pmad/weights`; `pmad fetch-weights` puts them there).
//! The test `tests/embedding_api.rs` runs [`demo`] (this file is included there as a module).

use pmad::data::{ImageView, PixelFormat, RgbImage};
use pmad::detector::Detector;
use pmad::detector::model_dir::ModelConfig;
use std::path::{Path, PathBuf};

/// The class the demo registers.
pub const DEMO_CLASS: &str = "synth_fabric";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => {
            let base = std::env::temp_dir().join(format!("pmad-example-{}", std::process::id()));
            let r = demo(&base);
            let _ = std::fs::remove_dir_all(&base);
            r
        }
        [model, class, image] => pmad::data::load_rgb(Path::new(image))
            .and_then(|img| inspect_frame(Path::new(model), class, &img)),
        _ => {
            eprintln!("usage: inspect [MODEL_DIR CLASS IMAGE]");
            std::process::exit(2);
        }
    };
    match result {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Builds a demo under `base` (synthetic data, a new model directory, one class registered
/// from decoded images) and inspects one normal and one defective test image. Returns the
/// JSON report of both.
pub fn demo(base: &Path) -> pmad::Result<String> {
    let data = base.join("data");
    let cfg = pmad::data::SynthConfig {
        classes: 1,
        seed: 5,
        train: 6,
        test_good: 1,
        test_bad: 1,
        size: 96,
        force: true,
    };
    pmad::data::synth::generate(&data, &cfg)?;
    let model = base.join("model");
    if model.exists() {
        std::fs::remove_dir_all(&model).map_err(|e| pmad::Error::io(&model, e))?;
    }
    Detector::create(&model, &ModelConfig::default())?;

    // Register from images in memory (here decoded from files; a camera would hand frames).
    let class_dir = data.join(DEMO_CLASS);
    let normal: Vec<RgbImage> =
        pmad::detector::pipeline::list_images(&class_dir.join("train/good"))?
            .iter()
            .map(|p| pmad::data::load_rgb(p))
            .collect::<pmad::Result<_>>()?;
    let mut det = Detector::open(&model, None)?;
    let info = det.register_images(DEMO_CLASS, &normal)?;
    eprintln!(
        "registered '{}': {} prototypes from {} images",
        info.name, info.n_prototypes, info.n_train_images
    );
    drop(det);

    let mut reports = Vec::new();
    for sub in ["good", "defect"] {
        let dir = test_dir(&class_dir, sub)?;
        let path = pmad::detector::pipeline::list_images(&dir)?
            .into_iter()
            .next()
            .ok_or_else(|| pmad::Error::invalid(format!("{}: no image", dir.display())))?;
        let img = pmad::data::load_rgb(&path)?;
        reports.push(inspect_frame(&model, DEMO_CLASS, &img)?);
    }
    Ok(format!("[{}]", reports.join(",")))
}

/// The test folder `good`, or (for `defect`) the first other one.
fn test_dir(class_dir: &Path, which: &str) -> pmad::Result<PathBuf> {
    let test = class_dir.join("test");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&test)
        .map_err(|e| pmad::Error::io(&test, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .find(|d| (d.file_name() == Some("good".as_ref())) == (which == "good"))
        .ok_or_else(|| pmad::Error::invalid(format!("{}: no '{which}' folder", test.display())))
}

/// Opens `model`, turns `img` into the kind of buffer a camera delivers (BGR, each row padded
/// to a multiple of 64 bytes), inspects it as `class` and returns the result as JSON.
pub fn inspect_frame(model: &Path, class: &str, img: &RgbImage) -> pmad::Result<String> {
    let det = Detector::open(model, None)?;
    let stride = (img.width * 3).div_ceil(64) * 64;
    let mut frame = vec![0u8; stride * img.height];
    for (y, row) in img.pixels.chunks(img.width * 3).enumerate() {
        for (x, p) in row.chunks(3).enumerate() {
            frame[y * stride + x * 3..][..3].copy_from_slice(&[p[2], p[1], p[0]]);
        }
    }
    let view = ImageView::new(&frame, img.width, img.height, stride, PixelFormat::Bgr8)?;
    let r = det.inspect_view(class, &view)?;
    let json = serde_json::json!({
        "class": class,
        "score": r.map.score,
        "threshold": r.threshold,
        "anomalous": r.anomalous,
        "map_size": r.map.size,
        "map_max": r.map.values.iter().copied().fold(f32::MIN, f32::max),
    });
    Ok(json.to_string())
}
