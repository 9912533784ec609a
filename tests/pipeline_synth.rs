//! The whole proposal-stage path on data the project generates itself:
//! `pmad synth` -> `pmad train` (seen classes) -> `pmad register` (an unseen class) ->
//! `pmad eval` (cross-class) -> `pmad inspect`, plus the bad-input cases of a model directory.

mod common;
use common::{pmad as run, pmad_ok as ok};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Synthetic data + a model trained on two classes with a third registered: built once,
/// shared by the tests of this file. Returns (data root, model dir), or None to skip.
fn fixture() -> Option<&'static (PathBuf, PathBuf)> {
    static F: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    F.get_or_init(|| {
        common::need_backbone()?;
        let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmad-pipeline");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let data = base.join("data");
        let model = base.join("model");
        let d = data.to_str().unwrap();
        let m = model.to_str().unwrap();
        ok(&[
            "synth",
            "--out",
            d,
            "--classes",
            "3",
            "--seed",
            "7",
            "--train",
            "16",
            "--test-good",
            "6",
            "--test-bad",
            "10",
            "--size",
            "128",
        ]);
        ok(&[
            "train",
            "--data",
            d,
            "--classes",
            "synth_fabric,synth_cap",
            "--out",
            m,
            "--flow-epochs",
            "2",
            "--flow-hidden",
            "64",
            "--preset",
            "tiny",
            "--vit-epochs",
            "3",
        ]);
        ok(&[
            "register",
            "--model",
            m,
            "--data",
            d,
            "--class",
            "synth_wood",
        ]);
        Some((data, model))
    })
    .as_ref()
}

fn eval_json(data: &Path, model: &Path, classes: &str, score: &str) -> serde_json::Value {
    let json = model.parent().unwrap().join(format!(
        "eval-{}-{score}-{classes}.json",
        model.file_name().unwrap().to_string_lossy()
    ));
    ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--classes",
        classes,
        "--score",
        score,
        "--json",
        json.to_str().unwrap(),
    ]);
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn unseen_class_is_detected_well_above_chance() {
    let Some((data, model)) = fixture() else {
        return;
    };
    // `product` is the full two-stage PMAD (tiny ViT, 3 epochs on two other classes).
    for score in ["distance", "flow", "flow-nll", "product"] {
        let r = eval_json(data, model, "synth_wood", score);
        let c = &r["classes"]["synth_wood"];
        let (img, pix) = (
            c["image_auroc"].as_f64().unwrap(),
            c["pixel_auroc"].as_f64().unwrap(),
        );
        eprintln!(
            "synth_wood ({score}): image AUROC {img:.3}, pixel AUROC {pix:.3}, AUPRO {:.3}",
            c["aupro"]
        );
        assert!(img > 0.75 && pix > 0.75, "{score}: image {img} pixel {pix}");
        assert_eq!(c["n_images"].as_u64(), Some(16));
        assert!(r["mean"]["image_auroc"].as_f64().is_some());
    }
}

#[test]
fn the_reconstruction_stage_runs_with_every_inference_mask() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(cfg["recon"]["preset"], "tiny");
    assert!(
        model.join("vit.safetensors").is_file() && model.join("tokenizer.safetensors").is_file()
    );
    assert!(
        !model.join("vit.checkpoint.safetensors").exists(),
        "spent checkpoint removed"
    );
    for mask in ["proposal", "random", "blockwise"] {
        for score in ["product", "entropy", "product-ce", "cross-entropy"] {
            let json = model
                .parent()
                .unwrap()
                .join(format!("eval-{mask}-{score}.json"));
            ok(&[
                "eval",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--classes",
                "synth_wood",
                "--score",
                score,
                "--inference-mask",
                mask,
                "--json",
                json.to_str().unwrap(),
            ]);
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
            let img = r["classes"]["synth_wood"]["image_auroc"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&img), "{mask}/{score}: {img}");
        }
    }
}

#[test]
fn a_feature_input_vit_trains_and_scores() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let other = model.parent().unwrap().join("model-features");
    let _ = std::fs::remove_dir_all(&other);
    let (d, m) = (data.to_str().unwrap(), other.to_str().unwrap());
    ok(&[
        "train",
        "--data",
        d,
        "--classes",
        "synth_fabric,synth_cap",
        "--out",
        m,
        "--skip",
        "flow",
        "--preset",
        "tiny",
        "--vit-input",
        "features",
        "--vit-epochs",
        "2",
    ]);
    ok(&[
        "register",
        "--model",
        m,
        "--data",
        d,
        "--class",
        "synth_wood",
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other.join("model.json")).unwrap()).unwrap();
    assert_eq!(cfg["recon"]["vit"]["input_dim"], 152);
    assert!(cfg["flow"].is_null(), "flow skipped");
    let r = eval_json(data, &other, "synth_wood", "product");
    let img = r["classes"]["synth_wood"]["image_auroc"].as_f64().unwrap();
    assert!(img > 0.75, "product with a feature-input ViT: {img}");
}

#[test]
fn seen_classes_are_detected_in_the_same_model() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let r = eval_json(data, model, "synth_fabric,synth_cap", "distance");
    // synth_fabric (fine texture, small defects, 13 bank images) is the hard one: ~0.67 here.
    let cap = r["classes"]["synth_cap"]["image_auroc"].as_f64().unwrap();
    let mean = r["mean"]["image_auroc"].as_f64().unwrap();
    assert!(cap > 0.9 && mean > 0.75, "cap {cap} mean {mean}");
}

#[test]
fn inspect_prints_json_lines_and_writes_heatmaps() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let out_dir = model.parent().unwrap().join("heatmaps");
    let good = data.join("synth_wood/test/good");
    let text = ok(&[
        "inspect",
        "--model",
        model.to_str().unwrap(),
        "--class",
        "synth_wood",
        "--out",
        out_dir.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for l in &lines {
        assert!(l["score"].as_f64().unwrap().is_finite());
        assert!(["normal", "anomalous"].contains(&l["verdict"].as_str().unwrap()));
        assert!(Path::new(l["heatmap"].as_str().unwrap()).is_file());
    }
    // Thresholds come from held-out normal training images: most normal test images pass.
    let normal = lines.iter().filter(|l| l["verdict"] == "normal").count();
    assert!(normal >= 3, "{normal}/6 normal images called normal");
}

#[test]
fn unknown_class_and_wrong_version_are_clear_errors_that_write_nothing() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let m = model.to_str().unwrap();
    let out = run(&[
        "eval",
        "--model",
        m,
        "--data",
        data.to_str().unwrap(),
        "--classes",
        "synth_nope",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("synth_nope"));
    let out = run(&[
        "inspect",
        "--model",
        m,
        "--class",
        "synth_tile",
        data.join("synth_wood/test/good").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not registered"));
    // A model directory of another format version.
    let other = model.parent().unwrap().join("old-model");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("model.json"), r#"{"format_version": 999}"#).unwrap();
    let out = run(&[
        "register",
        "--model",
        other.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--class",
        "synth_wood",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("model.json") && err.contains("version"),
        "{err}"
    );
    assert!(
        !other.join("classes").exists(),
        "nothing written into a foreign model dir"
    );
}

#[test]
fn failed_registration_leaves_the_model_untouched() {
    let Some((data, model)) = fixture() else {
        return;
    };
    // A class whose training folder holds an unreadable image.
    let bad_root = model.parent().unwrap().join("bad-data");
    let train = bad_root.join("broken/train/good");
    std::fs::create_dir_all(&train).unwrap();
    std::fs::copy(
        data.join("synth_wood/train/good/000.png"),
        train.join("000.png"),
    )
    .unwrap();
    std::fs::write(train.join("001.png"), b"not a png").unwrap();
    let before = std::fs::read_dir(model.join("classes")).unwrap().count();
    let out = run(&[
        "register",
        "--model",
        model.to_str().unwrap(),
        "--data",
        bad_root.to_str().unwrap(),
        "--class",
        "broken",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("001.png"), "{err}");
    assert_eq!(
        std::fs::read_dir(model.join("classes")).unwrap().count(),
        before,
        "no half-written class"
    );
}

#[test]
fn the_cuda_device_runs_or_says_clearly_why_not() {
    let Some((data, model)) = fixture() else {
        assert!(
            !common::gpu_required(),
            "PMAD_REQUIRE_GPU is set but the fixture (backbone weights) is missing"
        );
        return;
    };
    let good = data.join("synth_wood/test/good");
    let inspect = |device: &str| {
        run(&[
            "inspect",
            "--model",
            model.to_str().unwrap(),
            "--class",
            "synth_wood",
            "--score",
            "product",
            "--device",
            device,
            good.to_str().unwrap(),
        ])
    };
    let out = inspect("cuda");
    if cfg!(feature = "cuda") && out.status.success() {
        // A GPU is here: the scores must match the CPU run (tests/cuda_parity.rs checks the
        // ops; this checks the wiring).
        let cpu_out = inspect("cpu");
        assert!(cpu_out.status.success());
        let cpu = String::from_utf8_lossy(&cpu_out.stdout).to_string();
        let scores = |text: &str| -> Vec<f64> {
            text.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["score"]
                        .as_f64()
                        .unwrap()
                })
                .collect()
        };
        let (g, c) = (scores(&String::from_utf8_lossy(&out.stdout)), scores(&cpu));
        assert_eq!(g.len(), c.len());
        for (g, c) in g.iter().zip(&c) {
            assert!(
                (g - c).abs() <= 1e-3 * c.abs().max(1.0),
                "gpu {g} vs cpu {c}"
            );
        }
        return;
    }
    // Under PMAD_REQUIRE_GPU (the device check) the CUDA run above must have succeeded.
    assert!(
        !common::gpu_required(),
        "PMAD_REQUIRE_GPU is set but `inspect --device cuda` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "--device cuda cannot succeed here");
    let err = String::from_utf8_lossy(&out.stderr);
    let want = if cfg!(feature = "cuda") {
        "CUDA unavailable"
    } else {
        "--features cuda"
    };
    assert!(err.contains(want), "'{want}' not in: {err}");
    assert!(out.stdout.is_empty(), "no partial output");
}
