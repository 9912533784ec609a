//! One `Detector` shared by threads (`Arc<Detector>`, `&self` scoring), and raw pixel
//! buffers (`ImageView`) scored like decoded images. A small synthetic class is registered
//! through the library API (no training: the distance score needs only the bank).

mod common;

use pmad::data::{ImageView, PixelFormat, RgbImage};
use pmad::detector::Detector;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, OnceLock};

const CLASS: &str = "synth_fabric";

/// (model dir, test images) with one class registered; built once, or None to skip.
fn fixture() -> Option<&'static (PathBuf, Vec<RgbImage>)> {
    static F: OnceLock<Option<(PathBuf, Vec<RgbImage>)>> = OnceLock::new();
    F.get_or_init(|| {
        // A normal and defective test images (folders sorted: `good` is not first).
        let m = common::one_class_model("pmad-threads", 3, 6, 2, 2)?;
        let (model, mut test) = (m.model, m.test);
        test.truncate(4);
        let imgs = test
            .iter()
            .map(|p| pmad::data::load_rgb(p).unwrap())
            .collect();
        Some((model, imgs))
    })
    .as_ref()
}

fn open(model: &std::path::Path) -> Detector {
    Detector::open(model, Some(&common::backbone_weights().unwrap())).unwrap()
}

/// Score bits and anomaly-map bits, for exact comparison.
fn bits(det: &Detector, img: &RgbImage) -> (u32, Vec<u32>) {
    let r = det.inspect_image(CLASS, img).unwrap();
    (
        r.map.score.to_bits(),
        r.map.values.iter().map(|v| v.to_bits()).collect(),
    )
}

#[test]
fn threads_sharing_one_detector_score_exactly_as_one_thread() {
    let Some((model, imgs)) = fixture() else {
        return;
    };
    let expected: Vec<_> = {
        let det = open(model);
        imgs.iter().map(|img| bits(&det, img)).collect()
    };
    // A fresh detector: the class is not loaded yet, so the threads' first calls race on
    // the lazy load (the barrier starts them together).
    let det = Arc::new(open(model));
    let start = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (det, start) = (det.clone(), start.clone());
            let imgs = imgs.clone();
            std::thread::spawn(move || {
                start.wait();
                // Each thread in its own order, so different images are scored at once.
                (0..imgs.len())
                    .map(|k| {
                        let i = (k + t) % imgs.len();
                        (i, bits(&det, &imgs[i]))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for (i, got) in h.join().unwrap() {
            assert_eq!(got, expected[i], "image {i} scored differently on a thread");
        }
    }
    // Every thread got the one cached model.
    assert!(Arc::ptr_eq(
        &det.class(CLASS).unwrap(),
        &det.class(CLASS).unwrap()
    ));
}

/// The picture of `img` in `format`, rows padded to `stride` bytes.
fn encode(img: &RgbImage, format: PixelFormat, pad: usize) -> (Vec<u8>, usize) {
    let stride = img.width * format.channels() + pad;
    let mut data = Vec::with_capacity(stride * img.height);
    for row in img.pixels.chunks(img.width * 3) {
        for p in row.chunks(3) {
            match format {
                PixelFormat::Rgb8 => data.extend_from_slice(p),
                PixelFormat::Bgr8 => data.extend([p[2], p[1], p[0]]),
                PixelFormat::Rgba8 => data.extend([p[0], p[1], p[2], 200]),
                PixelFormat::Gray8 => data.push(p[0]),
            }
        }
        data.extend(std::iter::repeat_n(0xAB, pad));
    }
    (data, stride)
}

#[test]
fn image_views_score_like_the_rgb_image() {
    let Some((model, imgs)) = fixture() else {
        return;
    };
    let det = open(model);
    let img = &imgs[0];
    let want = det.inspect_image(CLASS, img).unwrap().map.score;
    for format in [PixelFormat::Rgb8, PixelFormat::Bgr8, PixelFormat::Rgba8] {
        for pad in [0, 5] {
            let (data, stride) = encode(img, format, pad);
            let v = ImageView::new(&data, img.width, img.height, stride, format).unwrap();
            let got = det.inspect_view(CLASS, &v).unwrap().map.score;
            assert_eq!(got.to_bits(), want.to_bits(), "{format:?} pad {pad}");
        }
    }
    // Gray: the same as its RGB expansion (R repeated into G and B).
    let (gray, stride) = encode(img, PixelFormat::Gray8, 3);
    let expanded = RgbImage {
        width: img.width,
        height: img.height,
        pixels: img
            .pixels
            .chunks(3)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
    };
    let v = ImageView::new(&gray, img.width, img.height, stride, PixelFormat::Gray8).unwrap();
    let got = det.inspect_views(CLASS, &[v, v]).unwrap();
    let want = det.inspect_image(CLASS, &expanded).unwrap().map.score;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.map.score.to_bits() == want.to_bits()));
}

#[test]
fn malformed_buffers_are_errors_not_panics() {
    let d = vec![0u8; 64 * 64 * 3];
    for (w, h, stride, f) in [
        (0, 64, 192, PixelFormat::Rgb8),
        (64, 0, 192, PixelFormat::Rgb8),
        (64, 64, 191, PixelFormat::Rgb8),
        (64, 65, 192, PixelFormat::Rgb8),
        (64, 64, 256, PixelFormat::Rgba8),
        (1 << 20, 1 << 20, 1 << 20, PixelFormat::Gray8),
        (usize::MAX, usize::MAX, usize::MAX, PixelFormat::Bgr8),
    ] {
        let e = ImageView::new(&d, w, h, stride, f).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
    let Some((model, _)) = fixture() else {
        return;
    };
    // An `RgbImage` whose buffer disagrees with its size: an error from the detector.
    let det = open(model);
    for (w, h, n) in [(64, 64, 64 * 64 * 3 - 1), (0, 0, 0), (usize::MAX, 2, 12)] {
        let bad = RgbImage {
            width: w,
            height: h,
            pixels: vec![0; n],
        };
        let e = det.inspect_image(CLASS, &bad).unwrap_err().to_string();
        assert!(e.contains("image"), "{e}");
    }
}
