//! The MVTec-AD layout reader: file lists, masks, preprocessing, and clear errors naming the
//! file for every kind of broken dataset.

mod common;

use image::ExtendedColorType;
use pmad::data::dataset::{ClassData, image_size, list_classes, load_image_input, load_mask};
use pmad::data::synth::{SynthClass, SynthConfig, generate};
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pmad-data-dataset-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn save(path: &Path, w: u32, h: u32, data: &[u8], colour: ExtendedColorType) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::save_buffer(path, data, w, h, colour).unwrap();
}

fn gray(path: &Path, w: u32, h: u32, value: u8) {
    save(
        path,
        w,
        h,
        &vec![value; (w * h) as usize],
        ExtendedColorType::L8,
    );
}

/// A valid one-class dataset `root/part`: 2 train, 1 good and 1 `dent` test image with mask.
fn tiny_class(root: &Path) -> PathBuf {
    let c = root.join("part");
    gray(&c.join("train/good/000.png"), 8, 6, 100);
    gray(&c.join("train/good/001.png"), 8, 6, 110);
    gray(&c.join("test/good/000.png"), 8, 6, 105);
    gray(&c.join("test/dent/000.png"), 8, 6, 90);
    gray(&c.join("ground_truth/dent/000_mask.png"), 8, 6, 255);
    c
}

/// Asserts `ClassData::open` fails and its message contains every needle.
fn open_fails(root: &Path, class: &str, needles: &[&str]) {
    let err = ClassData::open(root, class)
        .expect_err("should fail")
        .to_string();
    for n in needles {
        assert!(err.contains(n), "'{n}' not in: {err}");
    }
}

#[test]
fn reads_a_synthetic_set() {
    let d = tmpdir("synth");
    let cfg = SynthConfig {
        classes: 4,
        seed: 3,
        train: 3,
        test_good: 2,
        test_bad: 5,
        size: 64,
        force: false,
    };
    generate(&d, &cfg).unwrap();
    assert_eq!(
        list_classes(&d).unwrap(),
        ["synth_cap", "synth_fabric", "synth_nut", "synth_wood"]
    );
    for &class in cfg.class_list() {
        let data = ClassData::open(&d, class.name()).unwrap();
        assert_eq!(data.train.len(), 3);
        assert!(data.train.windows(2).all(|w| w[0] < w[1]), "sorted");
        let good: Vec<_> = data.test.iter().filter(|t| !t.is_defective()).collect();
        assert_eq!(good.len(), 2);
        assert!(good.iter().all(|t| t.mask.is_none()));
        let bad: Vec<_> = data.test.iter().filter(|t| t.is_defective()).collect();
        assert_eq!(bad.len(), 5);
        let mut kinds: Vec<&str> = class.defects().iter().map(|k| k.name()).collect();
        kinds.sort();
        assert_eq!(data.defect_types(), kinds);
        for t in bad {
            let mask = t.mask.as_ref().unwrap();
            assert_eq!(image_size(mask).unwrap(), image_size(&t.path).unwrap());
            let m = load_mask(mask, 64, 64).unwrap();
            assert!(m.iter().any(|&v| v), "{}: empty mask", mask.display());
        }
        let (x, orig) = load_image_input(&data.test[0].path, 32).unwrap();
        assert_eq!((x.len(), orig), (3 * 32 * 32, (64, 64)));
        assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
    // The grayscale class is written as 1-channel PNG and read as 3 equal channels.
    let d2 = tmpdir("synth-gray");
    generate(
        &d2,
        &SynthConfig {
            classes: 5,
            train: 1,
            test_good: 0,
            test_bad: 0,
            size: 32,
            ..cfg
        },
    )
    .unwrap();
    let metal = ClassData::open(&d2, SynthClass::Metal.name()).unwrap();
    assert!(metal.test.is_empty());
    let decoded = image::open(&metal.train[0]).unwrap();
    assert_eq!(decoded.color(), image::ColorType::L8);
    let (x, _) = load_image_input(&metal.train[0], 16).unwrap();
    assert_eq!(x[..256], x[256..512]);
}

#[test]
fn reads_the_real_data() {
    let Some(shared) = common::need_shared() else {
        return;
    };
    let real = shared.join("data/real");
    assert_eq!(
        list_classes(&real).unwrap(),
        ["bottle", "magnetic_tile", "metal_plate"]
    );
    let bottle = ClassData::open(&real, "bottle").unwrap();
    assert_eq!(bottle.train.len(), 209);
    assert_eq!(bottle.test.iter().filter(|t| !t.is_defective()).count(), 20);
    assert_eq!(bottle.test.iter().filter(|t| t.is_defective()).count(), 63);
    assert_eq!(
        bottle.defect_types(),
        ["broken_large", "broken_small", "contamination"]
    );

    let tile = ClassData::open(&real, "magnetic_tile").unwrap();
    assert_eq!((tile.train.len(), tile.test.len()), (400, 100 + 388));
    let (x, orig) = load_image_input(&tile.train[0], 224).unwrap();
    assert_eq!((x.len(), orig), (3 * 224 * 224, (256, 256)));
    let n = 224 * 224;
    assert!(
        x[..n] == x[n..2 * n] && x[n..2 * n] == x[2 * n..],
        "gray must load as 3 equal channels"
    );
    let crack = tile.test.iter().find(|t| t.defect == "crack").unwrap();
    assert!(
        load_mask(crack.mask.as_ref().unwrap(), 224, 224)
            .unwrap()
            .iter()
            .any(|&m| m)
    );
}

#[test]
fn masks_resize_by_nearest_and_threshold() {
    let d = tmpdir("mask");
    let p = d.join("m.png");
    // 4x2: row 0 = 0 200 0 127, row 1 = 255 0 128 0.
    save(
        &p,
        4,
        2,
        &[0, 200, 0, 127, 255, 0, 128, 0],
        ExtendedColorType::L8,
    );
    assert_eq!(
        load_mask(&p, 4, 2).unwrap(),
        [false, true, false, false, true, false, true, false]
    );
    // Pillow NEAREST 4x2 -> 2x1 reads x = 1, 3 of row 1.
    assert_eq!(load_mask(&p, 2, 1).unwrap(), [false, false]);
    // 4x2 -> 8x4: every source pixel twice in each direction.
    let up = load_mask(&p, 8, 4).unwrap();
    assert_eq!(
        &up[..8],
        &[false, false, true, true, false, false, false, false]
    );
    assert_eq!(
        &up[16..24],
        &[true, true, false, false, true, true, false, false]
    );
    // An RGB mask is read as grayscale.
    let q = d.join("rgb.png");
    save(&q, 2, 1, &[255, 255, 255, 0, 0, 0], ExtendedColorType::Rgb8);
    assert_eq!(load_mask(&q, 2, 1).unwrap(), [true, false]);
}

#[test]
fn inputs_from_any_pixel_format() {
    let d = tmpdir("formats");
    let rgba = d.join("rgba.png");
    save(
        &rgba,
        3,
        2,
        &[255, 0, 0, 7].repeat(6),
        ExtendedColorType::Rgba8,
    );
    let (x, orig) = load_image_input(&rgba, 4).unwrap();
    assert_eq!(orig, (3, 2));
    assert!(x[..16].iter().all(|&v| v == 1.0) && x[16..].iter().all(|&v| v == -127.0 / 128.0));
    let g16 = d.join("g16.png");
    let px: Vec<u8> = [0xFFFFu16; 20]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    save(&g16, 5, 4, &px, ExtendedColorType::L16);
    let (x, orig) = load_image_input(&g16, 7).unwrap();
    assert_eq!((x.len(), orig), (3 * 49, (5, 4)));
    assert!(x.iter().all(|&v| v == 1.0));
}

#[test]
fn a_valid_tiny_class_opens() {
    let d = tmpdir("tiny");
    tiny_class(&d);
    std::fs::write(d.join("part/train/good/notes.txt"), "not an image").unwrap();
    let data = ClassData::open(&d, "part").unwrap();
    assert_eq!(data.train.len(), 2);
    assert_eq!(data.test.len(), 2);
    assert_eq!(data.defect_types(), ["dent"]);
}

#[test]
fn empty_training_folder_is_named() {
    let d = tmpdir("empty");
    let c = tiny_class(&d);
    for f in ["000.png", "001.png"] {
        std::fs::remove_file(c.join("train/good").join(f)).unwrap();
    }
    open_fails(
        &d,
        "part",
        &[c.join("train/good").to_str().unwrap(), "no images"],
    );
    std::fs::remove_dir(c.join("train/good")).unwrap();
    open_fails(
        &d,
        "part",
        &[c.join("train/good").to_str().unwrap(), "missing"],
    );
}

#[test]
fn missing_mask_is_named() {
    let d = tmpdir("nomask");
    let c = tiny_class(&d);
    std::fs::remove_file(c.join("ground_truth/dent/000_mask.png")).unwrap();
    open_fails(
        &d,
        "part",
        &[
            c.join("test/dent/000.png").to_str().unwrap(),
            "000_mask.png",
        ],
    );
}

#[test]
fn mask_of_another_size_is_named() {
    let d = tmpdir("masksize");
    let c = tiny_class(&d);
    gray(&c.join("ground_truth/dent/000_mask.png"), 9, 6, 255);
    let mask = c.join("ground_truth/dent/000_mask.png");
    let image = c.join("test/dent/000.png");
    open_fails(
        &d,
        "part",
        &[
            mask.to_str().unwrap(),
            image.to_str().unwrap(),
            "9x6",
            "8x6",
        ],
    );
}

#[test]
fn unreadable_image_is_named() {
    let d = tmpdir("garbage");
    let c = tiny_class(&d);
    let bad = c.join("test/dent/000.png");
    std::fs::write(&bad, b"this is not a png at all").unwrap();
    open_fails(&d, "part", &[bad.to_str().unwrap()]);
    let err = load_image_input(&bad, 16).unwrap_err().to_string();
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    let err = load_mask(&bad, 4, 4).unwrap_err().to_string();
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    // A truncated PNG in train/good fails at open too.
    let c2 = tiny_class(&tmpdir("garbage2"));
    let trunc = c2.join("train/good/001.png");
    let bytes = std::fs::read(&trunc).unwrap();
    std::fs::write(&trunc, &bytes[..12]).unwrap();
    open_fails(c2.parent().unwrap(), "part", &[trunc.to_str().unwrap()]);
}

#[test]
fn unknown_class_lists_the_known_ones() {
    let d = tmpdir("unknown");
    tiny_class(&d);
    open_fails(
        &d,
        "bolt",
        &[d.join("bolt").to_str().unwrap(), "unknown class", "part"],
    );
    open_fails(&d, "../part", &["unknown class"]);
    let missing = d.join("nowhere");
    let err = ClassData::open(&missing, "part").unwrap_err().to_string();
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    let err = load_image_input(&d.join("none.png"), 8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("none.png"), "{err}");
}
