//! Bad input through the command line: one clear line on stderr naming the file, a non-zero
//! exit, and no output file left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmpdir(name: &str) -> PathBuf {
    let d =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pmad-cli-errors-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pmad(args: &[&Path]) -> Output {
    Command::new(common::pmad_bin())
        .args(args)
        .output()
        .unwrap()
}

/// Asserts failure with a single `error: ...` line that mentions `needle`.
fn assert_clear_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {err}");
    assert!(out.stdout.is_empty(), "no partial output expected");
}

/// A minimal safetensors file with one F32 tensor `input` of `shape`.
fn write_input(path: &Path, shape: &[usize]) {
    let t = pmad::Tensor::zeros(shape);
    pmad::weights::write_safetensors(path, [("input", &t)], None).unwrap();
}

#[test]
fn corrupt_png_names_the_file() {
    let d = tmpdir("png");
    let p = d.join("broken.png");
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[0u8, 0, 0, 13, b'I', b'H', b'D', b'R', 1, 2, 3]);
    std::fs::write(&p, &bytes).unwrap();
    let out = pmad(&[Path::new("classify"), &p]);
    assert_clear_error(&out, "broken.png");
}

#[test]
fn missing_image_names_the_file() {
    let out = pmad(&[
        Path::new("classify"),
        Path::new("/nonexistent/dir/photo.png"),
    ]);
    assert_clear_error(&out, "photo.png");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let d = tmpdir("trunc");
    let p = d.join("input.safetensors");
    write_input(&p, &[1, 3, 224, 224]);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let out = pmad(&[Path::new("classify"), &p]);
    assert_clear_error(&out, "input.safetensors");
}

#[test]
fn wrong_channel_count_names_the_file() {
    let d = tmpdir("channels");
    let p = d.join("gray.safetensors");
    write_input(&p, &[1, 1, 224, 224]);
    let out = pmad(&[Path::new("classify"), &p]);
    assert_clear_error(&out, "gray.safetensors");
}

#[test]
fn pickle_with_unexpected_content_is_refused_and_writes_nothing() {
    let d = tmpdir("pickle");
    let src = d.join("evil.pth");
    // protocol 2: GLOBAL 'os system', a string argument, TUPLE1, REDUCE, STOP.
    let mut pk = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.".to_vec();
    pk.truncate(pk.len());
    std::fs::write(&src, &pk).unwrap();
    let dst = d.join("out.safetensors");
    let out = pmad(&[Path::new("import-torch"), &src, &dst]);
    assert_clear_error(&out, "evil.pth");
    assert!(!dst.exists(), "no output on failure");
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        1,
        "no temp files left behind"
    );
}
