//! What practitioners put in: BMP/TIFF images (8 and 16 bits), and the dataset layouts
//! (MVTec AD, a plain good/bad folder, VisA, BTAD), each read back from a fixture that
//! `pmad synth --layout` wrote, plus the errors a broken dataset of each kind gives.

mod common;

use image::{ImageBuffer, Luma, Rgb};
use pmad::data::dataset::{ClassData, load_image_input, load_mask};
use pmad::data::load_rgb;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pmad-layouts-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 4x2 RGB gradient, and the same at 16 bits (each 8-bit value v as v * 257).
fn rgb8() -> ImageBuffer<Rgb<u8>, Vec<u8>> {
    ImageBuffer::from_fn(4, 2, |x, y| Rgb([(x * 60) as u8, (y * 200) as u8, 7]))
}

fn rgb16() -> ImageBuffer<Rgb<u16>, Vec<u16>> {
    ImageBuffer::from_fn(4, 2, |x, y| {
        Rgb([(x * 60 * 257) as u16, (y * 200 * 257) as u16, 7 * 257])
    })
}

#[test]
fn bmp_and_tiff_decode_to_the_same_rgb_as_png() {
    let d = tmpdir("formats");
    let png = d.join("ref.png");
    rgb8().save(&png).unwrap();
    let want = load_rgb(&png).unwrap();
    use image::ImageFormat::{Bmp, Tiff};
    let files = [
        ("rgb8.bmp", Bmp, false),
        ("rgb8.tif", Tiff, false),
        ("rgb16.tiff", Tiff, true),
        ("RGB8.BMP", Bmp, false),
    ];
    for (name, format, sixteen) in files {
        let p = d.join(name);
        if sixteen {
            rgb16().save_with_format(&p, format).unwrap();
        } else {
            rgb8().save_with_format(&p, format).unwrap();
        }
        let got = load_rgb(&p).unwrap();
        assert_eq!((got.width, got.height), (4, 2), "{name}");
        assert_eq!(got.pixels, want.pixels, "{name}: 16-bit scales to 8-bit");
        // And through the network input path.
        let (x, orig) = load_image_input(&p, 8).unwrap();
        assert_eq!(orig, (4, 2));
        assert_eq!(x, load_image_input(&png, 8).unwrap().0, "{name}");
    }
    // Gray (8 and 16 bits) is expanded to RGB.
    let g8: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_fn(3, 1, |x, _| Luma([x as u8 * 100]));
    let g16: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(3, 1, |x, _| Luma([x as u16 * 100 * 257]));
    g8.save(d.join("g8.bmp")).unwrap();
    g8.save(d.join("g8.tif")).unwrap();
    g16.save(d.join("g16.tif")).unwrap();
    for name in ["g8.bmp", "g8.tif", "g16.tif"] {
        let got = load_rgb(&d.join(name)).unwrap();
        assert_eq!(
            got.pixels,
            [0, 0, 0, 100, 100, 100, 200, 200, 200],
            "{name}"
        );
    }
}

#[test]
fn mvtec_reads_bmp_and_tiff_images_and_masks() {
    let root = tmpdir("mvtec-formats");
    let c = root.join("part");
    for (dir, name) in [("train/good", "000.bmp"), ("train/good", "001.tiff")] {
        std::fs::create_dir_all(c.join(dir)).unwrap();
        rgb8().save(c.join(dir).join(name)).unwrap();
    }
    std::fs::create_dir_all(c.join("test/dent")).unwrap();
    std::fs::create_dir_all(c.join("ground_truth/dent")).unwrap();
    rgb16().save(c.join("test/dent/000.tif")).unwrap();
    let mask: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(4, 2, |x, _| Luma([if x < 2 { 65535 } else { 0 }]));
    mask.save(c.join("ground_truth/dent/000_mask.tif")).unwrap();
    let data = ClassData::open(&root, "part").unwrap();
    assert_eq!(data.train.len(), 2);
    assert_eq!(data.test.len(), 1);
    let m = data.test[0].mask.clone().unwrap();
    assert!(m.ends_with("ground_truth/dent/000_mask.tif"));
    assert_eq!(
        load_mask(&m, 4, 2).unwrap(),
        [true, true, false, false, true, true, false, false]
    );
    // A BMP mask of 0/1 labels (saved from an array) reads as foreground where nonzero.
    let labels: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_fn(4, 2, |x, y| Luma([u8::from(x == y)]));
    let p = root.join("labels.bmp");
    labels.save(&p).unwrap();
    assert_eq!(
        load_mask(&p, 4, 2).unwrap(),
        [true, false, false, false, false, true, false, false]
    );
}

// --- The layouts, each from its own `pmad synth --layout` fixture ---

use pmad::data::layout::{Layout, LayoutChoice};
use pmad::data::synth::{SynthConfig, generate_layout};
use std::process::{Command, Output};

const CLASS: &str = "synth_fabric";

/// A tiny synthetic dataset (one class: 3 train, 2 good and 3 defective test images, 32 px).
fn synth(name: &str, layout: Layout) -> PathBuf {
    let root = tmpdir(name).join("data");
    let cfg = SynthConfig {
        classes: 1,
        train: 3,
        test_good: 2,
        test_bad: 3,
        size: 32,
        ..SynthConfig::default()
    };
    generate_layout(&root, &cfg, layout).unwrap();
    root
}

/// Where a layout's class is read from: the class folder for `folder`, the root otherwise.
fn data_dir(root: &Path, layout: Layout) -> PathBuf {
    match layout {
        Layout::Folder => root.join(CLASS),
        _ => root.to_path_buf(),
    }
}

#[test]
fn every_layout_reads_back_what_synth_wrote() {
    for layout in Layout::ALL {
        let root = synth(&format!("read-{}", layout.name()), layout);
        let dir = data_dir(&root, layout);
        let classes = [CLASS.to_string()];
        assert_eq!(LayoutChoice::Auto.resolve(&dir, &classes).unwrap(), layout);
        let data = layout.open(&dir, CLASS).unwrap();
        let name = layout.name();
        assert_eq!(data.name, CLASS);
        let good = data.test.iter().filter(|t| !t.is_defective()).count();
        let bad: Vec<_> = data.test.iter().filter(|t| t.is_defective()).collect();
        if layout == Layout::Folder {
            // good/ holds the normal test images; training images are in CLASS-train/good.
            assert_eq!(data.train.len(), 2, "{name}");
            let reg = layout.open_train(&root.join(format!("{CLASS}-train")), CLASS);
            assert_eq!(reg.unwrap().train.len(), 3);
        } else {
            assert_eq!(data.train.len(), 3, "{name}");
        }
        assert_eq!((good, bad.len()), (2, 3), "{name}");
        assert!(data.has_masks(), "{name}");
        for t in &bad {
            let m = load_mask(t.mask.as_ref().unwrap(), 32, 32).unwrap();
            assert!(
                m.iter().any(|&v| v),
                "{name}: {} mask is empty",
                t.path.display()
            );
            assert!(t.path.is_file());
        }
        if layout == Layout::Btad {
            assert!(bad[0].mask.as_ref().unwrap().extension().unwrap() == "bmp");
        }
        // Registration reads the training images only.
        let train = layout.open_train(&dir, CLASS).unwrap();
        assert_eq!(train.train, data.train, "{name}");
        assert!(train.test.is_empty());
    }
}

#[test]
fn auto_refuses_an_unknown_or_ambiguous_folder() {
    let d = tmpdir("auto");
    let classes = [CLASS.to_string()];
    let e = LayoutChoice::Auto
        .resolve(&d, &classes)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot tell the dataset layout") && e.contains("--layout"),
        "{e}"
    );
    std::fs::create_dir_all(d.join("good")).unwrap();
    std::fs::create_dir_all(d.join("split_csv")).unwrap();
    std::fs::write(
        d.join("split_csv/1cls.csv"),
        "object,split,label,image,mask\n",
    )
    .unwrap();
    let e = LayoutChoice::Auto
        .resolve(&d, &classes)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ambiguous") && e.contains("folder and visa"),
        "{e}"
    );
    let fixed = "btad".parse::<LayoutChoice>().unwrap();
    assert_eq!(fixed.resolve(&d, &classes).unwrap(), Layout::Btad);
    assert!(
        "coco"
            .parse::<LayoutChoice>()
            .unwrap_err()
            .contains("unknown layout")
    );
}

#[test]
fn a_folder_without_masks_is_read_for_image_metrics_only() {
    let root = synth("folder-nomask", Layout::Folder);
    let dir = root.join(CLASS);
    std::fs::remove_dir_all(dir.join("masks")).unwrap();
    let data = Layout::Folder.open(&dir, CLASS).unwrap();
    assert_eq!(data.test.len(), 5);
    assert!(!data.has_masks());
    assert!(data.test.iter().all(|t| t.mask.is_none()));
}

/// The error text of opening `dir` as `layout`, which must fail.
fn open_error(layout: Layout, dir: &Path) -> String {
    match layout.open(dir, CLASS) {
        Ok(_) => panic!("{} should not open", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_datasets_fail_up_front_naming_the_file() {
    // folder: no good/.
    let root = synth("err-folder", Layout::Folder);
    let dir = root.join(CLASS);
    std::fs::remove_dir_all(dir.join("good")).unwrap();
    let e = open_error(Layout::Folder, &dir);
    assert!(
        e.contains(&dir.join("good").display().to_string()) && e.contains("missing"),
        "{e}"
    );

    // folder: a mask of the wrong size.
    let root = synth("err-folder-size", Layout::Folder);
    let dir = root.join(CLASS);
    let mask = dir.join("masks/hole_000_mask.png");
    ImageBuffer::<Luma<u8>, Vec<u8>>::new(16, 16)
        .save(&mask)
        .unwrap();
    let e = open_error(Layout::Folder, &dir);
    assert!(
        e.contains(&mask.display().to_string()) && e.contains("16x16"),
        "{e}"
    );

    // folder: some bad images with masks, some without.
    let root = synth("err-folder-partial", Layout::Folder);
    let dir = root.join(CLASS);
    std::fs::remove_file(dir.join("masks/stain_000_mask.png")).unwrap();
    let e = open_error(Layout::Folder, &dir);
    assert!(e.contains("stain_000.png") && e.contains("no mask"), "{e}");

    // visa: a row naming a missing file, reported with its line.
    let root = synth("err-visa", Layout::Visa);
    let gone = root.join(CLASS).join("Data/Images/Anomaly/hole_000.png");
    std::fs::remove_file(&gone).unwrap();
    let e = open_error(Layout::Visa, &root);
    assert!(e.contains("1cls.csv") && e.contains("line 7"), "{e}");
    assert!(
        e.contains(&gone.display().to_string()) && e.contains("not found"),
        "{e}"
    );
    // ... which registration, reading the train rows only, does not need.
    assert_eq!(
        Layout::Visa.open_train(&root, CLASS).unwrap().train.len(),
        3
    );

    // visa: an anomaly in the training split; an unknown class.
    let csv = root.join("split_csv/1cls.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, text.replacen("train,normal", "train,anomaly", 1)).unwrap();
    let e = Layout::Visa
        .open_train(&root, CLASS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2") && e.contains("training split"), "{e}");
    let e = Layout::Visa.open(&root, "candle").unwrap_err().to_string();
    assert!(
        e.contains("unknown class 'candle'") && e.contains(CLASS),
        "{e}"
    );

    // btad: a defect image without its mask, a mask of the wrong size.
    let root = synth("err-btad", Layout::Btad);
    let c = root.join(CLASS);
    std::fs::remove_file(c.join("ground_truth/ko/hole_000.bmp")).unwrap();
    let e = open_error(Layout::Btad, &root);
    assert!(e.contains("hole_000.png") && e.contains("no mask"), "{e}");
    ImageBuffer::<Luma<u8>, Vec<u8>>::new(8, 8)
        .save(c.join("ground_truth/ko/hole_000.png"))
        .unwrap();
    let e = open_error(Layout::Btad, &root);
    assert!(e.contains("mask is 8x8"), "{e}");
    std::fs::remove_dir_all(c.join("train/ok")).unwrap();
    let e = open_error(Layout::Btad, &root);
    assert!(
        e.contains("train/ok") && e.contains("missing folder"),
        "{e}"
    );
}

// --- Through the binary ---

fn pmad(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::pmad_bin());
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let out = pmad(args, envs);
    assert!(
        out.status.success(),
        "pmad {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn folder_register_and_eval_end_to_end_with_plain_progress() {
    if common::need_backbone().is_none() {
        return;
    }
    let base = tmpdir("e2e");
    let data = base.join("data");
    let model = base.join("model");
    let quick = [
        "--train",
        "4",
        "--test-good",
        "3",
        "--test-bad",
        "3",
        "--size",
        "64",
    ];
    for (layout, out) in [("mvtec", base.join("mvtec")), ("folder", data.clone())] {
        let mut args = vec![
            "synth",
            "--out",
            s(&out),
            "--classes",
            "3",
            "--layout",
            layout,
        ];
        args.extend(quick);
        ok(&args, &[]);
    }
    // A model of prototypes only (the quickest there is), on an MVTec-layout class.
    ok(
        &[
            "train",
            "--data",
            s(&base.join("mvtec")),
            "--classes",
            "synth_fabric",
            "--out",
            s(&model),
            "--skip",
            "flow,tokenizer,vit",
        ],
        &[],
    );
    let wood = data.join("synth_wood");
    let wood_train = data.join("synth_wood-train");
    let out = ok(
        &[
            "register",
            "--model",
            s(&model),
            "--layout",
            "folder",
            "--data",
            s(&wood_train),
            "--class",
            "synth_wood",
        ],
        &[("PMAD_PROGRESS", "plain"), ("PMAD_PROGRESS_EVERY", "0")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("progress: ") && err.contains("img/s, ETA"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("registered 'synth_wood'"));

    // With masks: every metric. Without (masks/ removed): image metrics, pixel ones null / "-".
    let eval = |json: &Path| {
        ok(
            &[
                "eval",
                "--model",
                s(&model),
                "--data",
                s(&wood),
                "--classes",
                "synth_wood",
                "--json",
                s(json),
            ],
            &[("PMAD_PROGRESS", "off")],
        )
    };
    let j1 = base.join("with-masks.json");
    let out = eval(&j1);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j1).unwrap()).unwrap();
    let c = &r["classes"]["synth_wood"];
    assert_eq!(c["n_images"], 6);
    for k in [
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "f1_max",
        "pixel_f1_max",
    ] {
        let v = c[k].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{k} = {}", c[k]);
    }
    std::fs::remove_dir_all(wood.join("masks")).unwrap();
    let j2 = base.join("no-masks.json");
    let out = eval(&j2);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j2).unwrap()).unwrap();
    let c = &r["classes"]["synth_wood"];
    assert!(c["image_auroc"].as_f64().is_some() && c["f1_max"].as_f64().is_some());
    for k in ["pixel_auroc", "aupro", "pixel_f1_max"] {
        assert!(c[k].is_null(), "{k} = {}", c[k]);
        assert!(r["mean"][k].is_null());
    }
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("synth_wood")).unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("-"), "{table}");

    // Fail closed through the binary: several classes for one folder, --register on it, a
    // missing good/.
    let err = |args: &[&str], needle: &str| {
        let out = pmad(args, &[]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !e.contains("panicked"), "{e}");
        assert!(e.contains(needle), "'{needle}' not in: {e}");
    };
    let m = s(&model);
    let w = s(&wood);
    err(
        &["eval", "--model", m, "--data", w, "--classes", "a,b"],
        "one class",
    );
    err(
        &[
            "eval",
            "--model",
            m,
            "--data",
            w,
            "--classes",
            "synth_wood",
            "--register",
        ],
        "--register",
    );
    std::fs::remove_dir_all(wood.join("good")).unwrap();
    err(
        &[
            "eval",
            "--model",
            m,
            "--layout",
            "folder",
            "--data",
            w,
            "--classes",
            "synth_wood",
        ],
        "good",
    );
}
