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
