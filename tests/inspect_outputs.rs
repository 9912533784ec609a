//! `pmad inspect` per-image outputs on a small synthetic model: overlay, map (16-bit PNG and
//! `.npy`) and defect mask at the input's own size, the mask's area against the synthetic
//! ground truth, threshold overrides, and the fail-closed cases.

mod common;
use common::{pmad as run, pmad_ok as ok};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CLASS: &str = "synth_cap";

/// `pmad inspect --model MODEL --class CLASS` followed by `rest`.
fn inspect_cmd<'a>(model: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["inspect", "--model", model, "--class", CLASS];
    a.extend_from_slice(rest);
    a
}

/// Runs pmad expecting a failure whose stderr holds every one of `needles`.
fn fails(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pmad {args:?} succeeded");
    for n in needles {
        assert!(err.contains(n), "pmad {args:?}: '{n}' not in:\n{err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn base() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmad-inspect-outputs")
}

/// Synthetic data (one class) and a prototypes-only model of it (the quickest model there
/// is: the outputs do not depend on the score kind): made once per test binary.
fn fixture() -> Option<&'static (PathBuf, PathBuf)> {
    static F: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    F.get_or_init(|| {
        common::need_backbone()?;
        let base = base();
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let (data, model) = (base.join("data"), base.join("model"));
        ok(&[
            "synth",
            "--out",
            s(&data),
            "--classes",
            "2",
            "--seed",
            "5",
            "--train",
            "20",
            "--test-good",
            "4",
            "--test-bad",
            "12",
            "--size",
            "256",
        ]);
        ok(&[
            "train",
            "--data",
            s(&data),
            "--classes",
            CLASS,
            "--out",
            s(&model),
            "--skip",
            "flow,tokenizer,vit",
        ]);
        Some((data, model))
    })
    .as_ref()
}

/// Every image below `dir` (sorted), recursively.
fn images_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(images_under(&p));
        } else if p.extension().is_some_and(|e| e == "png") {
            v.push(p);
        }
    }
    v.sort();
    v
}

/// The first defective test image of the class.
fn defect_image(data: &Path) -> PathBuf {
    images_under(&data.join(CLASS).join("test"))
        .into_iter()
        .find(|p| !p.parent().unwrap().ends_with("good"))
        .unwrap()
}

fn dims(p: &str) -> (u32, u32) {
    image::image_dimensions(p).unwrap()
}

/// Reads a v1.0 `.npy` of float32: checks the header, returns (shape, values).
fn read_npy(p: &str) -> ((usize, usize), Vec<f32>) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "magic and version 1.0");
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hl) % 64, 0, "data 64-byte aligned");
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(header.ends_with('\n'), "{header:?}");
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"));
    let shape = header.split("'shape': (").nth(1).unwrap();
    let shape: Vec<usize> = shape
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let values: Vec<f32> = b[10 + hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), shape[0] * shape[1]);
    ((shape[0], shape[1]), values)
}

#[test]
fn outputs_have_the_input_size_and_the_npy_matches_the_png16_map() {
    let Some((data, model)) = fixture() else {
        return;
    };
    // A defect image stretched to a non-square 640x480 and to 1024x1024.
    let src = image::open(defect_image(data)).unwrap().to_rgb8();
    let big = base().join("sizes/in");
    std::fs::create_dir_all(&big).unwrap();
    for (name, w, h) in [("wide", 640, 480), ("square", 1024, 1024)] {
        image::imageops::resize(&src, w, h, image::imageops::FilterType::Triangle)
            .save(big.join(format!("{name}.png")))
            .unwrap();
    }
    let out = base().join("sizes/out");
    let out_npy = base().join("sizes/out-npy");
    let t = std::time::Instant::now();
    let png_lines = lines(&ok(&inspect_cmd(
        s(model),
        &["--out", s(&out), "--save-map", "--save-mask", s(&big)],
    )));
    let npy_lines = lines(&ok(&inspect_cmd(
        s(model),
        &[
            "--out",
            s(&out_npy),
            "--save-map",
            "--map-format",
            "npy",
            s(&big),
        ],
    )));
    eprintln!(
        "two inspect runs of 2 large images: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(png_lines.len(), 2);
    for (l, n) in png_lines.iter().zip(&npy_lines) {
        let want = dims(l["path"].as_str().unwrap());
        for key in ["heatmap", "map", "mask"] {
            let p = l[key].as_str().unwrap();
            assert_eq!(dims(p), want, "{key} {p}");
            eprintln!("{key}: {p} {want:?}");
        }
        assert!(l["map"].as_str().unwrap().ends_with("_map.png"));
        assert!(l["mask"].as_str().unwrap().ends_with("_mask.png"));
        assert_eq!(l["threshold_source"], "calibrated");
        // The 16-bit map reads back to the npy values within one quantisation step.
        let (scale, offset) = (
            l["map_scale"].as_f64().unwrap() as f32,
            l["map_offset"].as_f64().unwrap() as f32,
        );
        assert_eq!(offset, 0.0, "distance maps are non-negative");
        let png = image::open(l["map"].as_str().unwrap()).unwrap();
        assert_eq!(png.color(), image::ColorType::L16, "16-bit grayscale");
        let png = png.into_luma16();
        let npy = n["map"].as_str().unwrap();
        assert!(npy.ends_with("_map.npy") && n.get("map_scale").is_none());
        let ((h, w), values) = read_npy(npy);
        assert_eq!((w as u32, h as u32), want);
        let max = values.iter().fold(f32::MIN, |m, &v| m.max(v));
        assert!((max - scale).abs() <= 1e-6 * scale, "scale is the map max");
        let step = scale / 65535.0;
        let worst = png
            .pixels()
            .zip(&values)
            .map(|(p, &v)| (offset + p.0[0] as f32 / 65535.0 * scale - v).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= step, "png16 vs npy: {worst} > step {step}");
        // The mask is 0/255 and its area is what the line says.
        let mask = image::open(l["mask"].as_str().unwrap())
            .unwrap()
            .into_luma8();
        assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        let on = mask.pixels().filter(|p| p.0[0] == 255).count();
        assert_eq!(l["defect_area"]["pixels"].as_u64(), Some(on as u64));
        let frac = l["defect_area"]["fraction"].as_f64().unwrap();
        assert!((frac - on as f64 / (want.0 * want.1) as f64).abs() < 1e-12);
        // Every region box lies inside the image and holds mask pixels on its edges.
        let regions = l["regions"].as_array().unwrap();
        assert!(!regions.is_empty(), "a defect image shows a region");
        assert_eq!(l["regions_total"].as_u64(), Some(regions.len() as u64));
        for r in regions {
            let b: Vec<u32> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert!(b[0] + b[2] <= want.0 && b[1] + b[3] <= want.1, "{b:?}");
            assert!((b[0]..b[0] + b[2]).any(|x| mask.get_pixel(x, b[1]).0[0] == 255));
        }
    }
}

/// How far (pixels, Chebyshev) a defect's mask may reach beyond the true defect on these
/// 256 px images: the map has one value per patch cell (28x28 grid: ~9 px cells), each cell's
/// feature averages a 3x3 cell window (reach 1.5 cells, ~14 px), and the map is blurred with
/// sigma 4 px (2 sigma, 8 px): ~22 px, rounded up to 24.
const MASK_REACH: i64 = 24;

/// `mask` (`w x h`) dilated by a square of radius `r`.
fn dilate(mask: &[bool], w: i64, h: i64, r: i64) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i as i64 % w, i as i64 / w);
        for yy in (y - r).max(0)..=(y + r).min(h - 1) {
            for xx in (x - r).max(0)..=(x + r).min(w - 1) {
                out[(yy * w + xx) as usize] = true;
            }
        }
    }
    out
}

/// Measured on this fixture (12 defect images of synth_cap, 256x256, distance score, pixel
/// threshold 0.999 of out-of-fold normal pixels): the mask covers 85-100% of each true defect;
/// its area is 1.15-27x the true area (5.6x over all 12; thin scratches most: the map cannot
/// be finer than its patch cells), and 7.8% of the mask pixels lie further than MASK_REACH
/// from the defect (a second blob on one image, blobs reaching further on a few); the 4 good
/// images get empty masks. The bounds below hold that with margin. The area tolerance is
/// loose on purpose: a coarse map overshoots small defects, so the test pins coverage,
/// reach and the overall ratio rather than a tight per-image area.
#[test]
fn mask_area_tracks_the_ground_truth_defect_area() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let out = base().join("area");
    let test = data.join(CLASS).join("test");
    let stdout = ok(&inspect_cmd(
        s(model),
        &["--out", s(&out), "--save-mask", s(&test)],
    ));
    let (mut mask_sum, mut truth_sum, mut outside_sum, mut bad) = (0usize, 0, 0, 0);
    for l in lines(&stdout) {
        let path = PathBuf::from(l["path"].as_str().unwrap());
        let defect = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let pred = image::open(l["mask"].as_str().unwrap())
            .unwrap()
            .into_luma8();
        let (w, h) = pred.dimensions();
        let n = (w * h) as f64;
        let pred: Vec<bool> = pred.pixels().map(|p| p.0[0] == 255).collect();
        let area = l["defect_area"]["pixels"].as_u64().unwrap() as usize;
        assert_eq!(area, pred.iter().filter(|&&p| p).count());
        if defect == "good" {
            eprintln!("good/{stem}: mask {area} px ({:.4})", area as f64 / n);
            assert!((area as f64) < 0.01 * n, "good/{stem}: {area} px marked");
            continue;
        }
        let gt_path = data
            .join(CLASS)
            .join("ground_truth")
            .join(defect)
            .join(format!("{stem}_mask.png"));
        let gt = image::open(&gt_path).unwrap().into_luma8();
        assert_eq!(gt.dimensions(), (w, h));
        let gt: Vec<bool> = gt.pixels().map(|p| p.0[0] > 127).collect();
        let truth = gt.iter().filter(|&&g| g).count();
        let covered = gt.iter().zip(&pred).filter(|(g, p)| **g && **p).count();
        let near = dilate(&gt, w as i64, h as i64, MASK_REACH);
        let outside = pred.iter().zip(&near).filter(|(p, n)| **p && !**n).count();
        let (recall, ratio) = (covered as f64 / truth as f64, area as f64 / truth as f64);
        eprintln!(
            "{defect}/{stem}: mask {area} px ({:.4}), truth {truth} px ({:.4}), area ratio \
             {ratio:.2}, truth covered {recall:.2}, mask beyond reach {outside} px",
            area as f64 / n,
            truth as f64 / n,
        );
        assert!(
            recall >= 0.7,
            "{defect}/{stem}: only {recall:.2} of the defect marked"
        );
        assert!(
            (0.5..=40.0).contains(&ratio),
            "{defect}/{stem}: area ratio {ratio:.2}"
        );
        outside_sum += outside;
        mask_sum += area;
        truth_sum += truth;
        bad += 1;
    }
    assert_eq!(bad, 12);
    let (ratio, beyond) = (
        mask_sum as f64 / truth_sum as f64,
        outside_sum as f64 / mask_sum as f64,
    );
    eprintln!(
        "all defects: mask {mask_sum} px, truth {truth_sum} px, area ratio {ratio:.2}, \
         {beyond:.3} of the mask beyond reach"
    );
    assert!(
        (1.0..=10.0).contains(&ratio),
        "overall area ratio {ratio:.2}"
    );
    assert!(
        beyond <= 0.15,
        "{beyond:.3} of the mask beyond {MASK_REACH} px of a defect"
    );
}

/// The verdicts of a run over the class's test images with extra flags.
fn verdicts(model: &Path, data: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let test = data.join(CLASS).join("test");
    let mut args = inspect_cmd(s(model), extra);
    args.push(s(&test));
    lines(&ok(&args))
}

fn count_anomalous(l: &[serde_json::Value]) -> usize {
    l.iter().filter(|l| l["verdict"] == "anomalous").count()
}

#[test]
fn threshold_and_quantile_override_the_verdicts() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let cal = verdicts(model, data, &[]);
    let calibrated = cal[0]["threshold"].as_f64().unwrap();
    assert!(cal.iter().all(|l| l["threshold_source"] == "calibrated"));
    let all = verdicts(model, data, &["--threshold", "0"]);
    assert_eq!(count_anomalous(&all), all.len(), "threshold 0: every image");
    assert!(
        all.iter()
            .all(|l| l["threshold_source"] == "override" && l["threshold"] == 0.0)
    );
    let none = verdicts(model, data, &["--threshold", "1e30"]);
    assert_eq!(count_anomalous(&none), 0, "huge threshold: none");
    // The 1.0 quantile is the highest out-of-fold normal score; 0.5 its median, lower.
    let q1 = verdicts(model, data, &["--quantile", "1"]);
    let q05 = verdicts(model, data, &["--quantile", "0.5"]);
    let (t1, t05) = (
        q1[0]["threshold"].as_f64().unwrap(),
        q05[0]["threshold"].as_f64().unwrap(),
    );
    assert!(q1.iter().all(|l| l["threshold_source"] == "quantile"));
    assert!(
        t05 < t1 && t1 >= calibrated,
        "median {t05}, max {t1}, calibrated {calibrated}"
    );
    assert!(count_anomalous(&q05) >= count_anomalous(&q1));
    eprintln!(
        "anomalous of {}: calibrated {} (t {calibrated:.4}), q=1 {} (t {t1:.4}), q=0.5 {} \
         (t {t05:.4})",
        cal.len(),
        count_anomalous(&cal),
        count_anomalous(&q1),
        count_anomalous(&q05)
    );
}

#[test]
fn invalid_overrides_and_missing_out_fail_without_output_files() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let img = defect_image(data);
    let out = base().join("invalid-out");
    let _ = std::fs::remove_dir_all(&out);
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--threshold", "nan"], &["--threshold", "finite"]),
        (&["--threshold", "inf"], &["--threshold", "finite"]),
        (&["--quantile", "0"], &["--quantile", "(0, 1]"]),
        (&["--quantile", "1.5"], &["--quantile", "(0, 1]"]),
        (
            &["--threshold", "1", "--quantile", "0.9"],
            &["--threshold", "--quantile"],
        ),
        (&["--threshold", "abc"], &["--threshold"]),
        (&["--map-format", "npy"], &["--save-map"]),
        (
            &["--map-format", "tiff", "--save-map"],
            &["tiff", "png16 | npy"],
        ),
    ];
    for (extra, needles) in cases {
        let mut args = inspect_cmd(s(model), &["--out", s(&out)]);
        args.extend(extra);
        args.push(s(&img));
        fails(&args, needles);
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
    for flag in ["--save-map", "--save-mask"] {
        fails(&inspect_cmd(s(model), &[flag, s(&img)]), &["--out"]);
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let d = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &d);
        } else {
            std::fs::copy(&p, &d).unwrap();
        }
    }
}

#[test]
fn save_mask_without_pixel_thresholds_names_the_class_json() {
    let Some((data, model)) = fixture() else {
        return;
    };
    // A class.json as an older pmad wrote it: no pixel_thresholds.
    let old = base().join("old-model");
    let _ = std::fs::remove_dir_all(&old);
    copy_dir(model, &old);
    let class_dir = old.join("classes").join(CLASS);
    let version = std::fs::read_to_string(class_dir.join("CURRENT")).unwrap();
    let info_path = class_dir.join(version.trim()).join("class.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    let pt = info.as_object_mut().unwrap().remove("pixel_thresholds");
    assert!(
        pt.unwrap()["distance"].as_f64().unwrap() > 0.0,
        "register stored one"
    );
    std::fs::write(&info_path, serde_json::to_string_pretty(&info).unwrap()).unwrap();
    let img = defect_image(data);
    let out = base().join("old-out");
    let _ = std::fs::remove_dir_all(&out);
    // Verdicts and maps still work; masks fail closed, naming the file.
    ok(&inspect_cmd(
        s(&old),
        &["--out", s(&out), "--save-map", s(&img)],
    ));
    let _ = std::fs::remove_dir_all(&out);
    fails(
        &inspect_cmd(s(&old), &["--out", s(&out), "--save-mask", s(&img)]),
        &[info_path.to_str().unwrap(), "pixel_thresholds", "register"],
    );
    assert!(!out.exists(), "no output folder for a refused run");
    // A pixel threshold out of range is refused when the class is read, like a threshold.
    info["pixel_thresholds"] = serde_json::json!({"distance": -1.0});
    std::fs::write(&info_path, serde_json::to_string_pretty(&info).unwrap()).unwrap();
    fails(
        &inspect_cmd(s(&old), &[s(&img)]),
        &[
            info_path.to_str().unwrap(),
            "pixel_thresholds.distance",
            "negative",
        ],
    );
}

#[test]
fn a_failed_write_names_the_file_and_leaves_no_output_of_that_image() {
    let Some((data, model)) = fixture() else {
        return;
    };
    let img = defect_image(data);
    let stem = img.file_stem().unwrap().to_str().unwrap().to_string();
    let out = base().join("write-fail");
    let _ = std::fs::remove_dir_all(&out);
    // The mask (written last) cannot replace a non-empty folder of its name.
    let blocker = out.join(format!("{stem}_mask.png"));
    std::fs::create_dir_all(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"x").unwrap();
    let r = run(&inspect_cmd(
        s(model),
        &["--out", s(&out), "--save-map", "--save-mask", s(&img)],
    ));
    assert!(!r.status.success());
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&r.stdout).trim()).unwrap();
    let err = line["error"].as_str().unwrap();
    assert!(err.contains(&format!("{stem}_mask.png")), "{err}");
    // The overlay and the map, written before, were removed; no temporary file is left.
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(left, vec![format!("{stem}_mask.png")], "{left:?}");
}
