//! The accuracy options of issue 15 end to end on synthetic data: PatchCore's reweighted patch
//! score and few-shot augmentation of the bank go through `train` (register), `eval` and
//! `inspect`, are recorded in model.json / class.json, and the augmentation decision reads
//! nothing but the class's normal training images.

mod common;
use common::pmad_ok as ok;

use serde_json::Value;
use std::path::Path;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The current class.json of `class` in `model`.
fn class_json(model: &Path, class: &str) -> Value {
    let dir = model.join("classes").join(class);
    let v = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
    json(&dir.join(v.trim()).join("class.json"))
}

#[test]
fn reweighting_and_augmentation_run_through_register_eval_and_inspect() {
    if common::need_backbone().is_none() {
        return;
    }
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmad-accuracy-options");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let data = base.join("data");
    let (d, c) = (data.to_str().unwrap(), "synth_cap");
    ok(&[
        "synth",
        "--out",
        d,
        "--classes",
        "2",
        "--seed",
        "5",
        "--train",
        "10",
        "--test-good",
        "4",
        "--test-bad",
        "4",
        "--size",
        "64",
    ]);
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            d,
            "--classes",
            c,
            "--out",
            out.to_str().unwrap(),
            "--skip",
            "flow,tokenizer,vit",
        ];
        args.extend_from_slice(extra);
        ok(&args);
    };
    let plain = base.join("plain");
    let model = base.join("options");
    train(&plain, &[]);
    train(&model, &["--patch-score", "reweighted", "--augment", "all"]);
    let m = model.to_str().unwrap();

    // Recorded in model.json; a plain model says nn and no candidates.
    let cfg = json(&model.join("model.json"));
    assert_eq!(cfg["map"]["patch_score"]["reweighted"]["b"], 9, "{cfg}");
    assert_eq!(
        cfg["augment"],
        serde_json::json!(["hflip", "vflip", "rot90", "shift"])
    );
    let plain_cfg = json(&plain.join("model.json"));
    assert_eq!(plain_cfg["map"]["patch_score"], "nn");

    // The decision in class.json: every candidate tried once, in order, kept exactly when the
    // held-out mean fell; the bank keeps the un-augmented size.
    let info = class_json(&model, c);
    let trials = info["augmentation"].as_array().unwrap();
    let names: Vec<&str> = trials
        .iter()
        .map(|t| t["augment"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hflip", "vflip", "rot90", "shift"]);
    for t in trials {
        let (with, without) = (
            t["mean_with"].as_f64().unwrap(),
            t["mean_without"].as_f64().unwrap(),
        );
        assert!(with.is_finite() && without > 0.0, "{t}");
        assert_eq!(t["kept"].as_bool().unwrap(), with < without, "{t}");
    }
    assert_eq!(info["n_prototypes"], class_json(&plain, c)["n_prototypes"]);
    assert!(
        class_json(&plain, c)["augmentation"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // eval and inspect run with both options.
    let out = base.join("eval.json");
    ok(&[
        "eval",
        "--model",
        m,
        "--data",
        d,
        "--classes",
        c,
        "--json",
        out.to_str().unwrap(),
    ]);
    let r = &json(&out)["classes"][c];
    for k in [
        "image_auroc",
        "pixel_auroc",
        "false_alarm_rate",
        "detection_rate",
    ] {
        let v = r[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} {v}");
    }
    let lines = ok(&[
        "inspect",
        "--model",
        m,
        "--class",
        c,
        data.join(c).join("test").to_str().unwrap(),
    ]);
    let lines: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    for l in &lines {
        assert!(l["score"].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!(
            l["threshold"].as_f64().unwrap() as f32,
            info["thresholds"]["distance"].as_f64().unwrap() as f32
        );
    }
    // `eval --patch-score nn` re-scores the same model without the weight: same maps.
    let nn_out = base.join("eval-nn.json");
    ok(&[
        "eval",
        "--model",
        m,
        "--data",
        d,
        "--classes",
        c,
        "--patch-score",
        "nn",
        "--json",
        nn_out.to_str().unwrap(),
    ]);
    let nn = &json(&nn_out)["classes"][c];
    assert_eq!(
        nn["pixel_auroc"], r["pixel_auroc"],
        "the map is not reweighted"
    );
    assert!(
        nn["false_alarm_rate"].is_null(),
        "no verdicts for an override"
    );

    // The decision reads only train/good: registered again from a root without any test
    // images, the class gets the same decision and thresholds.
    let only_train = base.join("only-train");
    let good = only_train.join(c).join("train/good");
    std::fs::create_dir_all(&good).unwrap();
    for e in std::fs::read_dir(data.join(c).join("train/good")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), good.join(e.file_name())).unwrap();
    }
    ok(&[
        "register",
        "--model",
        m,
        "--data",
        only_train.to_str().unwrap(),
        "--class",
        c,
    ]);
    let again = class_json(&model, c);
    assert_eq!(again["augmentation"], info["augmentation"]);
    assert_eq!(again["thresholds"], info["thresholds"]);
    // `register --augment none` overrides the model's candidates for one class.
    ok(&[
        "register",
        "--model",
        m,
        "--data",
        only_train.to_str().unwrap(),
        "--class",
        c,
        "--augment",
        "none",
    ]);
    assert!(
        class_json(&model, c)["augmentation"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
