//! Fail closed, never lose a class: every case here first reproduces a failure a user met
//! (a NaN turned into a "normal" verdict, a class lost by a killed `register`, a run stopped
//! by one bad image, a panic on a closed pipe, ...) and checks what pmad does now.
//!
//! The model is small (synthetic 64 px images, one seen class with a 1-epoch flow and a tiny
//! ViT) so the whole file runs in a few minutes on 2 cores.

mod common;
use common::{pmad, pmad_ok as ok};

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn base() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmad-fail-closed")
}

/// Fails with an error on stderr containing every needle, no panic, and no verdict on
/// stdout.
fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' not in: {err}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("\"verdict\""),
        "a verdict was printed: {stdout}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Synthetic data and a trained model (class `synth_fabric` seen, `synth_wood` registered):
/// made once per test binary. Every test that changes a model works on its own copy.
fn fixture() -> Option<&'static (PathBuf, PathBuf)> {
    static F: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    F.get_or_init(|| {
        common::need_backbone()?;
        let base = base();
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let data = base.join("data");
        let model = base.join("model");
        synth(&data);
        ok(&train_args(&data, &model));
        ok(&register_args(&data, &model, "synth_wood"));
        Some((data, model))
    })
    .as_ref()
}

fn synth(data: &Path) {
    ok(&[
        "synth",
        "--out",
        s(data),
        "--classes",
        "3",
        "--seed",
        "3",
        "--train",
        "10",
        "--test-good",
        "3",
        "--test-bad",
        "3",
        "--size",
        "64",
    ]);
}

/// The full training pipeline, as small as it goes: registration, flow, codebook, ViT.
fn train_args<'a>(data: &'a Path, model: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        s(data),
        "--classes",
        "synth_fabric",
        "--out",
        s(model),
        "--flow-epochs",
        "1",
        "--flow-hidden",
        "16",
        "--preset",
        "tiny",
        "--vit-epochs",
        "1",
        "--vocab",
        "16",
    ]
}

/// `pmad register` of `class` from `data` into `model`.
fn register_args<'a>(data: &'a Path, model: &'a Path, class: &'a str) -> Vec<&'a str> {
    vec![
        "register",
        "--model",
        s(model),
        "--data",
        s(data),
        "--class",
        class,
    ]
}

/// A fresh copy of the fixture's model directory.
fn copy_model(name: &str) -> Option<(PathBuf, PathBuf)> {
    let (data, model) = fixture()?;
    let dst = base().join(name);
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(model, &dst);
    Some((data.clone(), dst))
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// The folder of the current version of a class.
fn current(model: &Path, class: &str) -> PathBuf {
    let cdir = model.join("classes").join(class);
    let v = std::fs::read_to_string(cdir.join("CURRENT")).unwrap();
    cdir.join(v.trim())
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Sets element `at` of tensor `name` of a safetensors file to `value` (rewrites the file).
fn poison(file: &Path, name: &str, at: usize, value: f32) {
    let st = pmad::weights::SafeTensors::open(file).unwrap();
    let meta = st.metadata().clone();
    let mut all = st.load_all().unwrap();
    drop(st);
    let (_, t) = all.iter_mut().find(|(n, _)| n == name).unwrap();
    let mut v = t.f32s().into_owned();
    v[at] = value;
    *t = pmad::Tensor::new(v, t.shape()).unwrap();
    pmad::weights::write_safetensors(file, all.iter().map(|(n, t)| (n.as_str(), t)), Some(&meta))
        .unwrap();
}

fn good_image(data: &Path) -> PathBuf {
    data.join("synth_wood/test/good/000.png")
}

fn bad_image(data: &Path) -> PathBuf {
    let dir = data.join("synth_wood/test");
    let defect = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap() != "good")
        .unwrap();
    defect.join("000.png")
}

fn inspect(model: &Path, class: &str, extra: &[&str], images: &[&Path]) -> Output {
    let mut args = vec!["inspect", "--model", s(model), "--class", class];
    args.extend_from_slice(extra);
    args.extend(images.iter().map(|p| s(p)));
    pmad(&args)
}

/// `inspect` succeeds on one image with a verdict.
fn inspect_works(model: &Path, class: &str, image: &Path) -> Value {
    let out = inspect(model, class, &[], &[image]);
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(line["verdict"].is_string());
    line
}

// ------------------------------------------------------------------------------------------
// 1. Non-finite values never become verdicts.

#[test]
fn a_nan_prototype_is_an_error_naming_the_bank_not_a_normal_verdict() {
    let Some((data, model)) = copy_model("nan-bank") else {
        return;
    };
    let bank = current(&model, "synth_wood").join("prototypes.safetensors");
    poison(&bank, "prototypes", 5, f32::NAN);
    let out = inspect(&model, "synth_wood", &[], &[&bad_image(&data)]);
    fails_with(&out, &["prototypes.safetensors", "non-finite"]);
    poison(&bank, "prototypes", 5, f32::INFINITY);
    let out = inspect(&model, "synth_wood", &[], &[&bad_image(&data)]);
    fails_with(&out, &["prototypes.safetensors", "non-finite"]);
    // `eval` used to fail later with "auroc: score 0 is NaN" (no class, no cause).
    let out = pmad(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--classes",
        "synth_wood",
    ]);
    fails_with(&out, &["prototypes.safetensors", "non-finite"]);
}

#[test]
fn nan_backbone_or_flow_weights_are_refused_at_load() {
    let Some((data, model)) = copy_model("nan-weights") else {
        return;
    };
    let flow = model.join("flow.safetensors");
    let st = pmad::weights::SafeTensors::open(&flow).unwrap();
    let name = st.names()[0].to_string();
    drop(st);
    poison(&flow, &name, 0, f32::NAN);
    let out = inspect(&model, "synth_wood", &[], &[&bad_image(&data)]);
    fails_with(&out, &["flow.safetensors", &name, "non-finite"]);
    // Registering with it fails too, and the registered class is kept as it was.
    let before = std::fs::read_to_string(model.join("classes/synth_wood/CURRENT")).unwrap();
    let out = pmad(&register_args(&data, &model, "synth_wood"));
    fails_with(&out, &["flow.safetensors"]);
    let after = std::fs::read_to_string(model.join("classes/synth_wood/CURRENT")).unwrap();
    assert_eq!(before, after);

    // A backbone with a NaN weight.
    let w = common::backbone_weights().unwrap();
    let bad = base().join("nan-backbone.safetensors");
    std::fs::copy(&w, &bad).unwrap();
    let st = pmad::weights::SafeTensors::open(&bad).unwrap();
    let conv = st
        .names()
        .into_iter()
        .find(|n| n.ends_with("weight"))
        .unwrap()
        .to_string();
    drop(st);
    poison(&bad, &conv, 3, f32::NAN);
    let (_, model) = copy_model("nan-backbone").unwrap();
    let out = inspect(
        &model,
        "synth_wood",
        &["--weights", s(&bad)],
        &[&bad_image(&data)],
    );
    fails_with(&out, &["nan-backbone.safetensors", "non-finite"]);
    let out = pmad(&[
        "register",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--class",
        "synth_wood",
        "--weights",
        s(&bad),
    ]);
    fails_with(&out, &["nan-backbone.safetensors"]);
    inspect_works(&model, "synth_wood", &good_image(&data));
}

#[test]
fn a_missing_or_null_threshold_is_an_error_not_a_verdict() {
    let Some((data, model)) = copy_model("no-threshold") else {
        return;
    };
    let info = current(&model, "synth_wood").join("class.json");
    let mut v = read_json(&info);
    v["thresholds"].as_object_mut().unwrap().remove("distance");
    std::fs::write(&info, v.to_string()).unwrap();
    let out = inspect(&model, "synth_wood", &[], &[&bad_image(&data)]);
    fails_with(&out, &["class.json", "thresholds.distance", "missing"]);
    // Other scores still have theirs.
    let out = inspect(
        &model,
        "synth_wood",
        &["--score", "flow"],
        &[&bad_image(&data)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A null threshold (what serde writes for NaN).
    v["thresholds"]["flow"] = Value::Null;
    std::fs::write(&info, v.to_string()).unwrap();
    let out = inspect(
        &model,
        "synth_wood",
        &["--score", "flow"],
        &[&bad_image(&data)],
    );
    fails_with(&out, &["class.json"]);
}

// ------------------------------------------------------------------------------------------
// 2. Validated configs: every number range-checked, naming the file and the field.

#[test]
fn out_of_range_model_json_numbers_are_clear_errors_without_panics() {
    let Some((data, model)) = copy_model("bad-config") else {
        return;
    };
    let cfg_path = model.join("model.json");
    let original = read_json(&cfg_path);
    let cases: &[(&str, Value, &str)] = &[
        ("/map/sigma_at_256", 1e30.into(), "map.sigma_at_256"),
        ("/map/sigma_at_256", 0.0.into(), "map.sigma_at_256"),
        ("/map/sigma_at_256", (-2.0).into(), "map.sigma_at_256"),
        ("/map/size", 0.into(), "map.size"),
        ("/map/size", 100000.into(), "map.size"),
        ("/features/input_size", 100000.into(), "features.input_size"),
        ("/features/input_size", 33.into(), "features.input_size"),
        ("/features/input_size", 0.into(), "features.input_size"),
        ("/features/pool", 99.into(), "features.pool"),
        ("/features/pool", 4.into(), "features.pool"),
        ("/coreset/ratio", 0.0.into(), "coreset.ratio"),
        ("/coreset/ratio", 5.0.into(), "coreset.ratio"),
        ("/coreset/ratio", (-1.0).into(), "coreset.ratio"),
        ("/threshold_quantile", (-1.0).into(), "threshold_quantile"),
        ("/flow/hidden", 1_000_000_000u64.into(), "flow.hidden"),
        ("/flow/blocks", 0.into(), "flow.blocks"),
        ("/recon/mask_ratio", 3.0.into(), "recon.mask_ratio"),
        ("/recon/vit/width", 1_000_000u64.into(), "recon.vit"),
        (
            "/features/taps",
            serde_json::json!(["blocks.99"]),
            "blocks.99",
        ),
        (
            "/features/taps",
            serde_json::json!(["blocks.4", "blocks.10.dw:999"]),
            "blocks.10.dw:999",
        ),
        (
            "/features/taps",
            serde_json::json!(["blocks.4.depthwise"]),
            "blocks.4.depthwise",
        ),
        ("/format_version", "1".into(), "format_version"),
    ];
    for (ptr, value, needle) in cases {
        let mut v = original.clone();
        *v.pointer_mut(ptr).unwrap() = value.clone();
        std::fs::write(&cfg_path, v.to_string()).unwrap();
        let out = inspect(&model, "synth_wood", &[], &[&good_image(&data)]);
        eprintln!("model.json {ptr} = {value}");
        fails_with(&out, &["model.json", needle]);
        let out = pmad(&register_args(&data, &model, "synth_cap"));
        fails_with(&out, &["model.json", needle]);
    }
    // A model written before `map.image_score` existed loads, with the max as its score.
    let mut old = original.clone();
    old["map"].as_object_mut().unwrap().remove("image_score");
    std::fs::write(&cfg_path, old.to_string()).unwrap();
    let cfg = pmad::detector::model_dir::read_config(&model).unwrap();
    assert_eq!(
        cfg.map.image_score,
        pmad::detector::scoring::ImageScore::Max
    );
    inspect_works(&model, "synth_wood", &good_image(&data));
    let mut v = original.clone();
    v["map"]["image_score"] = serde_json::json!({"top-mean": {"q": 7.0}});
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let out = inspect(&model, "synth_wood", &[], &[&good_image(&data)]);
    fails_with(&out, &["model.json", "map.image_score"]);
    std::fs::write(&cfg_path, original.to_string()).unwrap();
    // class.json numbers.
    let info = current(&model, "synth_wood").join("class.json");
    let original = read_json(&info);
    let cases: &[(&str, Value, &str)] = &[
        ("/thresholds/distance", (-1.0).into(), "thresholds.distance"),
        ("/mask_ratio", 7.0.into(), "mask_ratio"),
        ("/n_prototypes", 0.into(), "n_prototypes"),
        ("/n_prototypes", 3.into(), "prototypes"),
        ("/name", "other".into(), "name"),
    ];
    for (ptr, value, needle) in cases {
        let mut v = original.clone();
        *v.pointer_mut(ptr).unwrap() = value.clone();
        std::fs::write(&info, v.to_string()).unwrap();
        let out = inspect(&model, "synth_wood", &[], &[&good_image(&data)]);
        eprintln!("class.json {ptr} = {value}");
        fails_with(&out, &[needle]);
    }
    std::fs::write(&info, original.to_string()).unwrap();
    inspect_works(&model, "synth_wood", &good_image(&data));
}

// ------------------------------------------------------------------------------------------
// 3. Atomic registration, under SIGKILL at every step and under concurrent readers.

/// Runs pmad with `PMAD_FAULT_POINT=point`, waits until it reports the point, then sends
/// it SIGKILL. Returns whether the point was reached.
fn kill_at(point: &str, args: &[&str]) -> bool {
    let mut child = Command::new(common::pmad_bin())
        .args(args)
        .env("PMAD_FAULT_POINT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let marker = format!("pmad-fault: {point}");
    let reached = BufReader::new(stderr)
        .lines()
        .map_while(|l| l.ok())
        .any(|l| l.contains(&marker));
    child.kill().unwrap();
    child.wait().unwrap();
    reached
}

/// Entries of a class folder (to see stale temporaries).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_register_killed_at_any_step_keeps_the_old_class_and_a_rerun_completes() {
    let Some((data, model)) = copy_model("kill-register") else {
        return;
    };
    let args = register_args(&data, &model, "synth_wood");
    let good = good_image(&data);
    let cdir = model.join("classes/synth_wood");
    for point in [
        "register.bank-written",
        "register.version-written",
        "register.swapped",
    ] {
        let before = std::fs::read_to_string(cdir.join("CURRENT")).unwrap();
        assert!(kill_at(point, &args), "{point} not reached");
        // The old class (or, after the swap, the new one) serves.
        inspect_works(&model, "synth_wood", &good);
        let now = std::fs::read_to_string(cdir.join("CURRENT")).unwrap();
        if point == "register.swapped" {
            assert_ne!(before, now, "{point}: the swap had happened");
        } else {
            assert_eq!(before, now, "{point}: the old class stays current");
        }
        // A rerun completes and cleans what the killed one left.
        ok(&args);
        let left = entries(&cdir);
        assert!(
            !left.iter().any(|e| e.contains(".tmp-")),
            "{point}: stale temporaries: {left:?}"
        );
        assert!(
            left.len() <= 3,
            "{point}: CURRENT + 2 versions at most: {left:?}"
        );
        inspect_works(&model, "synth_wood", &good);
    }
    // Kills at seeded random instants of a registration.
    let mut seed = 0x5eed_u64;
    for _ in 0..6 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = std::time::Duration::from_millis(100 + (seed >> 33) % 1500);
        let mut child = Command::new(common::pmad_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        inspect_works(&model, "synth_wood", &good);
    }
    ok(&args);
    inspect_works(&model, "synth_wood", &good);
}

#[test]
fn a_first_registration_killed_before_the_swap_leaves_no_class() {
    let Some((data, model)) = copy_model("kill-first-register") else {
        return;
    };
    let args = register_args(&data, &model, "synth_cap");
    assert!(kill_at("register.version-written", &args));
    let out = inspect(&model, "synth_cap", &[], &[&good_image(&data)]);
    fails_with(&out, &["not registered"]);
    ok(&args);
    inspect_works(&model, "synth_cap", &good_image(&data));
}

#[test]
fn readers_never_miss_a_class_while_it_is_re_registered() {
    let Some((data, model)) = copy_model("concurrent") else {
        return;
    };
    let weights = common::backbone_weights().unwrap();
    let normal =
        pmad::detector::pipeline::list_images(&data.join("synth_wood/train/good")).unwrap();
    let img = pmad::data::load_rgb(&good_image(&data)).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (reads, failures, registrations) = std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            let mut det = pmad::detector::Detector::open(&model, Some(&weights)).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                det.register("synth_wood", &normal).unwrap();
                n += 1;
            }
            n
        });
        // Each read is a fresh reader, as a new `pmad inspect` process would be.
        let mut failures = Vec::new();
        let mut reads = 0;
        let t = std::time::Instant::now();
        while reads < 200 {
            reads += 1;
            let r = pmad::detector::Detector::open(&model, Some(&weights))
                .and_then(|d| d.inspect_image("synth_wood", &img));
            if let Err(e) = r {
                failures.push(e.to_string());
            }
            if t.elapsed().as_secs() > 240 {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (reads, failures, writer.join().unwrap())
    });
    eprintln!("{reads} inspects during {registrations} registrations");
    assert!(reads >= 200, "only {reads} inspects");
    assert!(
        registrations >= 2,
        "the class must have been replaced while reading"
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

#[test]
fn a_train_killed_at_each_stage_boundary_resumes_to_a_calibrated_model() {
    let Some((data, _)) = fixture() else {
        return;
    };
    let points = [
        "register.version-written",
        "train.class-registered",
        "train.flow-saved",
        "train.flow-installed",
        "train.vit-saved",
        "train.done",
    ];
    for point in points {
        let model = base().join(format!("kill-train-{point}"));
        let _ = std::fs::remove_dir_all(&model);
        let args = train_args(data, &model);
        assert!(kill_at(point, &args), "{point} not reached");
        let mut resume = args.clone();
        resume.push("--resume");
        ok(&resume);
        // Complete: every score the model can compute has a threshold, and inspects.
        let info = read_json(&current(&model, "synth_fabric").join("class.json"));
        for kind in [
            "distance",
            "flow",
            "flow-nll",
            "product",
            "entropy",
            "product-ce",
        ] {
            assert!(
                info["thresholds"][kind]
                    .as_f64()
                    .is_some_and(f64::is_finite),
                "{point}: no '{kind}' threshold after --resume: {}",
                info["thresholds"]
            );
        }
        let img = data.join("synth_fabric/test/good/000.png");
        let out = inspect(&model, "synth_fabric", &["--score", "product"], &[&img]);
        assert!(
            out.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&model);
    }
}

// ------------------------------------------------------------------------------------------
// 4. Bad images do not stop a run; outputs never collide.

#[test]
fn inspect_scores_every_readable_image_and_reports_the_bad_one() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let dir = base().join("mixed-images");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = data.join("synth_wood/test/good");
    for i in 0..3 {
        std::fs::copy(
            good.join(format!("00{i}.png")),
            dir.join(format!("a{i}.png")),
        )
        .unwrap();
    }
    // A truncated PNG in the middle.
    let bytes = std::fs::read(good.join("000.png")).unwrap();
    std::fs::write(dir.join("a1b.png"), &bytes[..bytes.len() / 3]).unwrap();
    let out = inspect(model, "synth_wood", &["--batch", "2"], &[&dir]);
    assert!(
        !out.status.success(),
        "a bad image makes the run exit non-zero"
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "one line per image");
    let bad: Vec<&Value> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["path"].as_str().unwrap().ends_with("a1b.png"));
    assert_eq!(lines.iter().filter(|l| l["verdict"].is_string()).count(), 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 4 images"), "{err}");
    // --fail-fast stops at it.
    let out = inspect(
        model,
        "synth_wood",
        &["--batch", "1", "--fail-fast"],
        &[&dir],
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "a0 and a1 only"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("a1b.png"));
}

#[test]
fn heatmaps_of_same_named_images_in_different_folders_do_not_collide() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let out_dir = base().join("heatmaps-mirror");
    let _ = std::fs::remove_dir_all(&out_dir);
    let a = data.join("synth_wood/test/good/000.png");
    let b = bad_image(data); // .../test/<defect>/000.png
    let text = ok(&[
        "inspect",
        "--model",
        s(model),
        "--class",
        "synth_wood",
        "--out",
        s(&out_dir),
        s(&a),
        s(&b),
    ]);
    let maps: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["heatmap"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(maps.len(), 2);
    assert_ne!(maps[0], maps[1]);
    // Mirrored below the folder common to both (synth_wood/test).
    assert_eq!(Path::new(&maps[0]), out_dir.join("good/000_heatmap.png"));
    let defect = b.parent().unwrap().file_name().unwrap();
    assert_eq!(
        Path::new(&maps[1]),
        out_dir.join(defect).join("000_heatmap.png")
    );
    for m in &maps {
        assert!(Path::new(m).is_file());
    }
}

#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let mut child = Command::new(common::pmad_bin())
        .args([
            "inspect",
            "--model",
            s(model),
            "--class",
            "synth_wood",
            "--batch",
            "1",
        ])
        .arg(data.join("synth_wood/test"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line (like `| head -1`), then close the pipe.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    drop(stdout);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(first.contains("verdict"));
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success(), "exit {status:?}: {err}");
}

// ------------------------------------------------------------------------------------------
// 5. register reads only train/good, and flags outliers among the normal images.

#[test]
fn register_needs_only_train_good_and_reports_outliers() {
    let Some((data, model)) = copy_model("outliers") else {
        return;
    };
    // A class with a test set that would not evaluate (no ground_truth/, a defect folder).
    let root = base().join("outlier-data");
    let _ = std::fs::remove_dir_all(&root);
    let train = root.join("odd/train/good");
    std::fs::create_dir_all(&train).unwrap();
    std::fs::create_dir_all(root.join("odd/test/crack")).unwrap();
    for e in std::fs::read_dir(data.join("synth_wood/train/good")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, train.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(bad_image(&data), root.join("odd/test/crack/000.png")).unwrap();
    let args = register_args(&root, &model, "odd");
    let out = pmad(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    let plain = read_json(&current(&model, "odd").join("class.json"));
    // A 16-bit noise image among the normal ones.
    let mut rng = 12345u64;
    let noise = image::ImageBuffer::from_fn(64, 64, |_, _| {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
        image::Rgb([(rng >> 48) as u16, (rng >> 32) as u16, (rng >> 16) as u16])
    });
    noise.save(train.join("999_noise.png")).unwrap();
    let out = pmad(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("999_noise.png"),
        "{err}"
    );
    let flagged = read_json(&current(&model, "odd").join("class.json"));
    assert_eq!(
        flagged["outliers"].as_array().unwrap().len(),
        1,
        "{}",
        flagged["outliers"]
    );
    let mut drop_args = args.to_vec();
    drop_args.push("--drop-outliers");
    let out = pmad(&drop_args);
    assert!(out.status.success());
    let dropped = read_json(&current(&model, "odd").join("class.json"));
    assert_eq!(dropped["outliers"][0]["dropped"], true);
    assert_eq!(dropped["n_train_images"], plain["n_train_images"]);
}

// ------------------------------------------------------------------------------------------
// 6. Messages name the class, folder or file.

#[test]
fn eval_on_a_test_set_without_defects_names_the_class_and_folder() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let root = base().join("only-good");
    let _ = std::fs::remove_dir_all(&root);
    copy_dir(
        &data.join("synth_wood/train"),
        &root.join("synth_wood/train"),
    );
    copy_dir(
        &data.join("synth_wood/test/good"),
        &root.join("synth_wood/test/good"),
    );
    let out = pmad(&[
        "eval",
        "--model",
        s(model),
        "--data",
        s(&root),
        "--classes",
        "synth_wood",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("synth_wood") && err.contains("test") && err.contains("defective"),
        "{err}"
    );
}

#[test]
fn import_torch_refuses_to_overwrite_its_source() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_zip.pt");
    let copy = base().join("self-import.pt");
    std::fs::create_dir_all(base()).unwrap();
    std::fs::copy(&src, &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let out = pmad(&["import-torch", s(&copy), s(&copy)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("being converted"));
    assert_eq!(std::fs::read(&copy).unwrap(), before, "source untouched");
}
