//! Fuzz targets for pmad's parsers, shared by the stable CI harness (`tests/fuzz.rs`) and the
//! cargo-fuzz / libFuzzer targets (`fuzz/fuzz_targets/*.rs`).
//!
//! Each target feeds arbitrary bytes to a real library parser and ignores `Err`: a malformed
//! input must give an error, never a panic, an abort, a hang or a huge allocation.

#![allow(dead_code)]

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Images with more pixels than this are decoded but not resized (resizing is linear in the
/// input, and a legitimate caller never resizes gigapixel images).
const MAX_RESIZE_PIXELS: usize = 4096 * 4096;

thread_local! {
    /// One scratch file per thread, reused for every safetensors input.
    static SCRATCH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

fn scratch_path() -> PathBuf {
    SCRATCH.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| {
                let thread = format!("{:?}", std::thread::current().id())
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect::<String>();
                std::env::temp_dir().join(format!(
                    "pmad-fuzz-{}-{thread}.safetensors",
                    std::process::id()
                ))
            })
            .clone()
    })
}

/// Removes this thread's scratch file (the CI harness calls it when a target is done).
pub fn remove_scratch_file() {
    SCRATCH.with(|s| {
        if let Some(p) = s.borrow_mut().take() {
            let _ = std::fs::remove_file(p);
        }
    });
}

/// `SafeTensors::open` on the bytes (via a per-thread temp file), then every tensor read.
pub fn safetensors(data: &[u8]) {
    let path = scratch_path();
    {
        // Rewrite in place: the previous input's map is dropped before we get here.
        let mut f = std::fs::File::create(&path).expect("create fuzz scratch file");
        f.write_all(data).expect("write fuzz scratch file");
    }
    let Ok(st) = pmad::weights::SafeTensors::open(&path) else {
        return;
    };
    let _ = st.metadata().len();
    let _ = st.load_all();
    for name in st.names() {
        let Some(info) = st.info(name) else {
            panic!("names() lists '{name}' but info() does not know it");
        };
        if let Ok(t) = st.tensor(name) {
            assert_eq!(t.shape(), info.shape.as_slice());
            let bytes = t.raw_bytes();
            assert_eq!(bytes.len(), info.data_offsets.1 - info.data_offsets.0);
            let values = t.f32s();
            assert_eq!(values.len(), t.numel());
            if t.dtype() == pmad::DType::I64 {
                assert_eq!(t.i64s().len(), t.numel());
            }
        }
        if info.dtype.is_float()
            && let Ok(t) = st.tensor_f32_checked(name, &info.shape)
        {
            let sum: f32 = t.f32s().iter().sum();
            std::hint::black_box(sum);
        }
    }
}

/// The pickle VM and the PyTorch checkpoint importer (zip and legacy formats).
pub fn torch(data: &[u8]) {
    if let Ok(tensors) = pmad::weights::load_torch_checkpoint_bytes(data, Path::new("fuzz.pth")) {
        for (_, t) in tensors {
            assert_eq!(t.f32s().len(), t.numel());
        }
    }
}

/// `model.json` and `class.json` parsing. The first byte picks the parser (even: model.json,
/// odd: class.json); the rest is the file. Both are tried on the whole input too, so a JSON
/// seed also reaches them unchanged.
pub fn model_dir(data: &[u8]) {
    use pmad::detector::model_dir::{parse_class_info, parse_config};
    if let Some((&selector, rest)) = data.split_first() {
        if selector % 2 == 0 {
            let _ = parse_config(rest, Path::new("model.json"));
        } else {
            let _ = parse_class_info(rest, Path::new("class.json"));
        }
    }
    let _ = parse_config(data, Path::new("model.json"));
    let _ = parse_class_info(data, Path::new("class.json"));
}

/// PNG/JPEG decoding to RGB, then a Pillow-style resize to 32x32.
pub fn image(data: &[u8]) {
    let Ok(img) = pmad::data::image::decode_rgb(data, Path::new("fuzz.png")) else {
        return;
    };
    assert_eq!(img.pixels.len(), img.width * img.height * 3);
    if img.width.saturating_mul(img.height) <= MAX_RESIZE_PIXELS {
        let small = img.resize(32, 32);
        assert_eq!(small.pixels.len(), 32 * 32 * 3);
        let sq = img.center_square();
        assert_eq!(sq.pixels.len(), sq.width * sq.height * 3);
    }
}
