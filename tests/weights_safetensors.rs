//! safetensors reader/writer: round trips, alignment, zero-copy, and rejection of corrupt files.

use half::{bf16, f16};
use pmad::weights::{SafeTensors, write_safetensors};
use pmad::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fresh, empty directory for one test (under cargo's per-target temp dir).
fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("weights_st_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sample_tensors() -> Vec<(String, Tensor)> {
    let i64s: Vec<u8> = [7i64, -3, 1 << 40]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    vec![
        (
            "conv.weight".to_string(),
            Tensor::new(
                (0..24).map(|x| x as f32 * 0.5 - 3.0).collect(),
                &[2, 3, 2, 2],
            )
            .unwrap(),
        ),
        (
            // 3 f16 = 6 bytes: would misalign whatever followed it if written in name order.
            "a_half".to_string(),
            Tensor::from_f16(
                [0.5f32, -1.25, 2.0]
                    .iter()
                    .map(|&x| f16::from_f32(x))
                    .collect(),
                &[3],
            )
            .unwrap(),
        ),
        (
            "b_bf16".to_string(),
            Tensor::from_bf16(
                [1.0f32, -2.0, 0.25]
                    .iter()
                    .map(|&x| bf16::from_f32(x))
                    .collect(),
                &[1, 3],
            )
            .unwrap(),
        ),
        (
            "bn.num_batches_tracked".to_string(),
            Tensor::from_bytes(i64s, DType::I64, &[3]).unwrap(),
        ),
        (
            "u8".to_string(),
            Tensor::from_bytes(vec![1, 2, 255], DType::U8, &[3]).unwrap(),
        ),
        ("scalar".to_string(), Tensor::new(vec![42.0], &[]).unwrap()),
        ("empty".to_string(), Tensor::new(vec![], &[0, 4]).unwrap()),
        (
            "z_last_f32".to_string(),
            Tensor::new(vec![1.0, 2.0, 3.0], &[3]).unwrap(),
        ),
    ]
}

fn write_sample(path: &Path) -> Vec<(String, Tensor)> {
    let tensors = sample_tensors();
    let mut meta = BTreeMap::new();
    meta.insert("source".to_string(), "unit test \"quoted\"".to_string());
    write_safetensors(path, tensors.iter().map(|(n, t)| (n, t)), Some(&meta)).unwrap();
    tensors
}

#[test]
fn round_trip_all_dtypes() {
    let dir = test_dir("round_trip");
    let path = dir.join("model.safetensors");
    let tensors = write_sample(&path);

    let st = SafeTensors::open(&path).unwrap();
    assert_eq!(st.path(), path.as_path());
    assert_eq!(st.len(), tensors.len());
    let mut names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(st.names(), names);
    assert_eq!(st.metadata()["source"], "unit test \"quoted\"");

    for (name, t) in &tensors {
        let info = st.info(name).unwrap();
        assert_eq!(info.dtype, t.dtype(), "{name}");
        assert_eq!(info.shape, t.shape(), "{name}");
        let back = st.tensor(name).unwrap();
        assert!(back.is_mapped(), "{name} should be a view of the map");
        assert_eq!(back.dtype(), t.dtype(), "{name}");
        assert_eq!(back.shape(), t.shape(), "{name}");
        assert_eq!(back.raw_bytes().as_ref(), t.raw_bytes().as_ref(), "{name}");
    }
    let ints = st.tensor("bn.num_batches_tracked").unwrap().i64s();
    assert_eq!(ints, vec![7, -3, 1 << 40]);
    assert_eq!(
        st.tensor("a_half").unwrap().f32s().as_ref(),
        &[0.5, -1.25, 2.0]
    );
    assert_eq!(
        st.tensor("b_bf16").unwrap().f32s().as_ref(),
        &[1.0, -2.0, 0.25]
    );
    assert_eq!(st.tensor("scalar").unwrap().f32s().as_ref(), &[42.0]);
    assert_eq!(st.tensor("empty").unwrap().numel(), 0);
    assert!(st.info("missing").is_none());
    let all = st.load_all().unwrap();
    assert_eq!(all.len(), tensors.len());
}

#[test]
fn layout_is_aligned_and_f32_is_zero_copy() {
    let dir = test_dir("aligned");
    let path = dir.join("model.safetensors");
    write_sample(&path);

    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data_start = 8 + header_len;
    assert_eq!(
        data_start % 64,
        0,
        "data section must start on a 64-byte boundary"
    );
    // The JSON is padded with spaces only.
    let json = std::str::from_utf8(&bytes[8..data_start]).unwrap();
    assert!(json.trim_end().ends_with('}'));
    // Header keys are in name order, metadata first.
    let keys_in_order: Vec<usize> = [
        "__metadata__",
        "a_half",
        "b_bf16",
        "conv.weight",
        "z_last_f32",
    ]
    .iter()
    .map(|k| json.find(&format!("\"{k}\"")).unwrap())
    .collect();
    assert!(keys_in_order.windows(2).all(|w| w[0] < w[1]), "{json}");

    let st = SafeTensors::open(&path).unwrap();
    let mut ranges = Vec::new();
    for name in st.names() {
        let info = st.info(name).unwrap();
        let (begin, end) = info.data_offsets;
        // Each tensor starts at a multiple of its element size (absolute offset too).
        assert_eq!(begin % info.dtype.size(), 0, "{name} at {begin}");
        assert_eq!((data_start + begin) % info.dtype.size(), 0, "{name}");
        ranges.push((begin, end));
    }
    // Packed without holes, as the reference implementation requires.
    ranges.sort();
    assert_eq!(ranges[0].0, 0);
    assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0), "{ranges:?}");
    assert_eq!(ranges.last().unwrap().1, bytes.len() - data_start);

    // f32 data is borrowed straight from the map: the slice points into the file's bytes.
    for name in ["conv.weight", "z_last_f32"] {
        let t = st.tensor(name).unwrap();
        assert!(t.is_mapped());
        let raw = t.raw_bytes();
        let f = t.f32s();
        assert!(
            matches!(f, std::borrow::Cow::Borrowed(_)),
            "{name} was copied"
        );
        assert_eq!(f.as_ptr() as *const u8, raw.as_ptr(), "{name}");
    }
}

#[test]
fn f32_checked_accepts_floats_and_names_problems() {
    let dir = test_dir("checked");
    let path = dir.join("model.safetensors");
    write_sample(&path);
    let st = SafeTensors::open(&path).unwrap();

    let w = st.tensor_f32_checked("conv.weight", &[2, 3, 2, 2]).unwrap();
    assert_eq!(w.f32s()[0], -3.0);
    let h = st.tensor_f32_checked("a_half", &[3]).unwrap();
    assert_eq!(h.f32s().as_ref(), &[0.5, -1.25, 2.0]);
    st.tensor_f32_checked("b_bf16", &[1, 3]).unwrap();

    let e = st
        .tensor_f32_checked("conv.weight", &[2, 3, 3, 3])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("'conv.weight'"),
        "{e}"
    );
    assert!(
        e.contains("[2, 3, 2, 2]") && e.contains("[2, 3, 3, 3]"),
        "{e}"
    );

    let e = st
        .tensor_f32_checked("bn.num_batches_tracked", &[3])
        .unwrap_err()
        .to_string();
    assert!(e.contains("I64") && e.contains("float"), "{e}");
    assert!(e.contains("'bn.num_batches_tracked'"), "{e}");

    let e = st.tensor_f32_checked("nope", &[1]).unwrap_err().to_string();
    assert!(e.contains("no tensor named 'nope'"), "{e}");
    let e = st.tensor("nope").unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn writer_replaces_atomically_and_leaves_no_temp_files() {
    let dir = test_dir("atomic");
    let path = dir.join("w.safetensors");
    let a = Tensor::new(vec![1.0, 2.0], &[2]).unwrap();
    write_safetensors(&path, [("a", &a)], None).unwrap();
    let old = SafeTensors::open(&path).unwrap();
    let old_view = old.tensor("a").unwrap();

    // Overwrite with different content while the old file is still mapped.
    let b = Tensor::new(vec![5.0, 6.0, 7.0], &[3]).unwrap();
    write_safetensors(&path, vec![("b".to_string(), b)], None).unwrap();
    let new = SafeTensors::open(&path).unwrap();
    assert_eq!(new.names(), vec!["b"]);
    assert!(new.metadata().is_empty());
    // The old map still sees the old bytes: the file was replaced, not rewritten in place.
    assert_eq!(old_view.f32s().as_ref(), &[1.0, 2.0]);

    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "w.safetensors")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A write into a missing directory fails cleanly and names the target.
    let bad = dir.join("no_such_dir").join("x.safetensors");
    let e = write_safetensors(&bad, [("a", &a)], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.safetensors"), "{e}");
    assert!(!bad.exists());
}

#[test]
fn writer_rejects_bad_names() {
    let dir = test_dir("bad_names");
    let path = dir.join("w.safetensors");
    let a = Tensor::new(vec![1.0], &[1]).unwrap();
    let e = write_safetensors(&path, [("x", &a), ("x", &a)], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate tensor name 'x'"), "{e}");
    let e = write_safetensors(&path, [("__metadata__", &a)], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("reserved"), "{e}");
    assert!(!path.exists());
    // No tensors at all is a valid (empty) file.
    write_safetensors(&path, Vec::<(String, Tensor)>::new(), None).unwrap();
    assert!(SafeTensors::open(&path).unwrap().is_empty());
}

#[test]
fn truncated_files_are_rejected_with_the_file_name() {
    let dir = test_dir("truncated");
    let path = dir.join("full.safetensors");
    write_sample(&path);
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cuts = [
        0,                   // empty file
        3,                   // inside the length field
        8,                   // length only
        8 + header_len / 2,  // inside the JSON
        8 + header_len,      // header only, no data
        8 + header_len + 10, // inside the data
        bytes.len() - 1,     // one byte short
    ];
    for cut in cuts {
        let p = dir.join(format!("cut_{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = SafeTensors::open(&p).unwrap_err().to_string();
        assert!(
            e.contains(&format!("cut_{cut}.safetensors")),
            "cut {cut}: {e}"
        );
    }
    // Inside the data, the message names a tensor whose bytes are missing.
    let p = dir.join(format!("cut_{}.safetensors", bytes.len() - 1));
    let e = SafeTensors::open(&p).unwrap_err().to_string();
    assert!(e.contains("tensor '") && e.contains("past the end"), "{e}");
}

/// Writes a file with a hand-made header and `data_len` zero bytes of data.
fn file_with_header(dir: &Path, name: &str, json: &str, data_len: usize) -> PathBuf {
    let p = dir.join(name);
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(json.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn corrupt_headers_are_rejected() {
    let dir = test_dir("corrupt");
    let cases: &[(&str, &str, usize, &[&str])] = &[
        (
            "past_end",
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
            &["tensor 'w'", "past the end"],
        ),
        (
            "wrong_dtype",
            r#"{"w":{"dtype":"FLOAT32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
            &["tensor 'w'", "unsupported dtype 'FLOAT32'"],
        ),
        (
            "byte_count",
            r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#,
            24,
            &["tensor 'w'", "needs 24"],
        ),
        (
            "overlap",
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            16,
            &["tensor 'b'", "inside tensor 'a'", "overlapping"],
        ),
        ("not_json", "{not json", 0, &["not valid JSON"]),
        ("not_object", "[]", 0, &["not a JSON object"]),
        (
            "huge_offsets",
            r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551616]}}"#,
            0,
            &["tensor 'w'", "data_offsets"],
        ),
    ];
    for (name, json, data_len, wants) in cases {
        let file = format!("{name}.safetensors");
        let p = file_with_header(&dir, &file, json, *data_len);
        let e = SafeTensors::open(&p).unwrap_err().to_string();
        assert!(e.contains(&file), "{name}: {e}");
        for want in *wants {
            assert!(e.contains(want), "{name}: missing '{want}' in: {e}");
        }
    }

    // A header length pointing past the end of the file, and an absurd one.
    for (name, len) in [("len_past_end", 1000u64), ("len_huge", u64::MAX)] {
        let p = dir.join(format!("{name}.safetensors"));
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        std::fs::write(&p, b).unwrap();
        let e = SafeTensors::open(&p).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("header length"), "{e}");
    }
}
