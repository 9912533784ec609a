//! The library API an embedding program uses: typed errors it can match on, registering a
//! class from images in memory (the same class as from their files), and the runnable
//! example `examples/inspect.rs`.

mod common;

#[allow(dead_code)]
#[path = "../examples/inspect.rs"]
mod inspect_example;

use pmad::data::{ImageView, PixelFormat, RgbImage};
use pmad::detector::Detector;
use pmad::detector::model_dir::ModelConfig;
use pmad::{Error, ImageOrigin};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CLASS: &str = "synth_fabric";

fn tmp(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Synthetic data of one class: (its normal training images, its data root); built once.
fn data() -> &'static (Vec<PathBuf>, PathBuf) {
    static D: OnceLock<(Vec<PathBuf>, PathBuf)> = OnceLock::new();
    D.get_or_init(|| {
        let data = tmp("pmad-embed-data");
        let cfg = pmad::data::SynthConfig {
            classes: 1,
            seed: 11,
            train: 7,
            test_good: 1,
            test_bad: 1,
            size: 96,
            force: false,
        };
        pmad::data::synth::generate(&data, &cfg).unwrap();
        let normal =
            pmad::detector::pipeline::list_images(&data.join(CLASS).join("train/good")).unwrap();
        (normal, data)
    })
}

fn new_model(name: &str) -> PathBuf {
    let model = tmp(name);
    Detector::create(&model, &ModelConfig::default()).unwrap();
    model
}

#[test]
fn weights_missing_and_model_version_are_typed() {
    // No backbone file: the path and the command that fetches it.
    let model = new_model("pmad-embed-noweights");
    let missing = model.join("nowhere/efficientnet_lite0.safetensors");
    match Detector::open(&model, Some(&missing)) {
        Err(Error::WeightsMissing { path, hint, .. }) => {
            assert_eq!(path, missing);
            assert_eq!(hint, "pmad fetch-weights --backbone lite0");
        }
        Err(e) => panic!("not WeightsMissing: {e}"),
        Ok(_) => panic!("opened without weights"),
    }
    // A model directory of another format version.
    let old = tmp("pmad-embed-oldmodel");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("model.json"), r#"{"format_version": 999}"#).unwrap();
    match Detector::open(&old, None) {
        Err(e @ Error::ModelVersion { .. }) => {
            let msg = e.to_string();
            let Error::ModelVersion {
                path,
                found,
                supported,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(path, old.join("model.json"));
            assert_eq!(found, "999");
            assert_eq!(supported, pmad::detector::model_dir::FORMAT_VERSION);
            assert!(
                msg.contains("model.json") && msg.contains("version"),
                "{msg}"
            );
        }
        Err(e) => panic!("not ModelVersion: {e}"),
        Ok(_) => panic!("opened a model of format version 999"),
    }
}

#[test]
fn undecodable_files_are_bad_images_naming_the_file() {
    let dir = tmp("pmad-embed-badfile");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("broken.png");
    std::fs::write(&f, b"not a png").unwrap();
    match pmad::data::load_rgb(&f) {
        Err(Error::BadImage {
            origin: ImageOrigin::File(p),
            reason,
        }) => {
            assert_eq!(p, f);
            assert!(reason.contains("cannot decode"), "{reason}");
        }
        other => panic!("not BadImage: {other:?}"),
    }
    // A view that does not fit its buffer.
    let e: Error = ImageView::packed(&[0u8; 5], 2, 2, PixelFormat::Rgb8)
        .unwrap_err()
        .into();
    assert!(matches!(e, Error::BadImage { .. }), "{e}");
}

#[test]
fn class_not_registered_and_bad_batch_images_are_typed() {
    let Some(weights) = common::need_backbone() else {
        return;
    };
    let (normal, _) = data();
    let model = new_model("pmad-embed-typed");
    let mut det = Detector::open(&model, Some(&weights)).unwrap();
    let img = pmad::data::load_rgb(&normal[0]).unwrap();
    match det.inspect_image("synth_nothing", &img) {
        Err(Error::ClassNotRegistered {
            class,
            model_dir,
            registered,
        }) => {
            assert_eq!(class, "synth_nothing");
            assert_eq!(model_dir, model);
            assert!(registered.is_empty());
        }
        other => panic!("not ClassNotRegistered: {other:?}"),
    }
    // A malformed image in memory, at index 1 of what the caller passed: named by index,
    // at registration and at inspection.
    let short = RgbImage {
        width: 8,
        height: 8,
        pixels: vec![0; 8 * 8 * 3 - 1],
    };
    let imgs = [img.clone(), short.clone(), img.clone()];
    match det.register_images(CLASS, &imgs) {
        Err(Error::BadImage {
            origin: ImageOrigin::Batch(1),
            reason,
        }) => assert!(reason.contains("bytes"), "{reason}"),
        other => panic!("not BadImage of image 1: {:?}", other.map(|i| i.name)),
    }
    assert!(!pmad::detector::class_store::exists(&model, CLASS));
    det.register(CLASS, normal).unwrap();
    match det.inspect_batch(CLASS, &[img.clone(), short]) {
        Err(e @ Error::BadImage { .. }) => {
            assert!(e.to_string().starts_with("image 1 of the batch"), "{e}");
        }
        other => panic!("not BadImage: {:?}", other.map(|v| v.len())),
    }
    // Registered now: its name is in the next error's list.
    match det.inspect_image("synth_other", &img) {
        Err(Error::ClassNotRegistered { registered, .. }) => {
            assert_eq!(registered, vec![CLASS.to_string()])
        }
        other => panic!("not ClassNotRegistered: {:?}", other.map(|r| r.anomalous)),
    }
}

/// The same images registered from their files and from memory give the same class: the
/// same prototypes (and the images they came from), thresholds and out-of-fold scores.
#[test]
fn registering_from_memory_equals_registering_from_files() {
    let Some(weights) = common::need_backbone() else {
        return;
    };
    let (normal, _) = data();
    let model = new_model("pmad-embed-memory");
    let mut det = Detector::open(&model, Some(&weights)).unwrap();
    let from_files = det.register("from_files", normal).unwrap();
    let imgs: Vec<RgbImage> = normal
        .iter()
        .map(|p| pmad::data::load_rgb(p).unwrap())
        .collect();
    let from_memory = det.register_images("from_memory", &imgs).unwrap();
    assert_eq!(from_memory.n_train_images, normal.len());
    assert_eq!(from_files.n_prototypes, from_memory.n_prototypes);
    assert_eq!(from_files.calibration_folds, from_memory.calibration_folds);
    assert!(!from_files.thresholds.is_empty());
    let bits = |m: &std::collections::BTreeMap<String, f32>| -> Vec<(String, u32)> {
        m.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect()
    };
    assert_eq!(bits(&from_files.thresholds), bits(&from_memory.thresholds));
    assert_eq!(
        bits(&from_files.pixel_thresholds),
        bits(&from_memory.pixel_thresholds)
    );
    assert_eq!(from_files.normal_scores, from_memory.normal_scores);
    // Stored and reloaded: the banks and the prototypes' source images agree.
    let reopened = Detector::open(&model, Some(&weights)).unwrap();
    let a = reopened.class("from_files").unwrap();
    let b = reopened.class("from_memory").unwrap();
    assert!(a.source_image.is_some());
    assert_eq!(a.source_image, b.source_image);
    let bank_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bank_bits(&a.bank), bank_bits(&b.bank));
    // And raw buffers (BGR) of the same pixels register the same class again.
    let bgr: Vec<Vec<u8>> = imgs
        .iter()
        .map(|i| {
            i.pixels
                .chunks(3)
                .flat_map(|p| [p[2], p[1], p[0]])
                .collect()
        })
        .collect();
    let views: Vec<ImageView> = imgs
        .iter()
        .zip(&bgr)
        .map(|(i, d)| ImageView::packed(d, i.width, i.height, PixelFormat::Bgr8).unwrap())
        .collect();
    let from_views = det.register_views("from_views", &views).unwrap();
    assert_eq!(bits(&from_files.thresholds), bits(&from_views.thresholds));
}

/// `examples/inspect.rs` end to end: a synthetic class registered from memory, a normal and a
/// defective frame inspected from BGR buffers, printed as JSON.
#[test]
fn the_inspect_example_runs() {
    if common::need_backbone().is_none() {
        return;
    }
    let base = tmp("pmad-embed-example");
    let json = inspect_example::demo(&base).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2, "{json}");
    for r in items {
        assert_eq!(r["class"], inspect_example::DEMO_CLASS);
        let (score, threshold) = (
            r["score"].as_f64().unwrap(),
            r["threshold"].as_f64().unwrap(),
        );
        assert!(
            score.is_finite() && threshold.is_finite() && threshold > 0.0,
            "{r}"
        );
        assert_eq!(r["anomalous"].as_bool().unwrap(), score > threshold, "{r}");
    }
    // The defective image scores above the normal one.
    assert!(
        items[1]["score"].as_f64() > items[0]["score"].as_f64(),
        "{json}"
    );
}
