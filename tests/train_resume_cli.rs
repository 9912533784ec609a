//! `pmad train` killed mid-way (SIGKILL while the ViT trains) and rerun with `--resume` ends
//! with the same model as an uninterrupted run: bit-identical ViT weights and thresholds.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "--threads",
        "2",
        "train",
        "--data",
        data,
        "--classes",
        "synth_fabric,synth_cap",
        "--out",
        out,
        "--flow-epochs",
        "1",
        "--flow-hidden",
        "32",
        "--preset",
        "tiny",
        "--vit-epochs",
        "8",
        "--checkpoint-every",
        "1",
    ]
}

fn run_ok(args: &[&str]) {
    let out = Command::new(common::pmad_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pmad {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn killed_training_resumes_to_the_same_model() {
    if common::need_backbone().is_none() {
        return;
    }
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmad-resume-cli");
    let _ = std::fs::remove_dir_all(&base);
    let data = base.join("data");
    let d = data.to_str().unwrap();
    run_ok(&[
        "synth",
        "--out",
        d,
        "--classes",
        "2",
        "--seed",
        "3",
        "--train",
        "16",
        "--test-good",
        "2",
        "--test-bad",
        "2",
        "--size",
        "96",
    ]);
    let whole = base.join("whole");
    run_ok(&train_args(d, whole.to_str().unwrap()));

    // Same run, killed as soon as the first ViT checkpoint is on disk.
    let cut = base.join("cut");
    let ckpt = cut.join("vit.checkpoint.safetensors");
    let mut child = Command::new(common::pmad_bin())
        .args(train_args(d, cut.to_str().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ckpt.is_file() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training ended ({status}) before its first checkpoint");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed mid-way, not finished");
    assert!(
        !cut.join("vit.safetensors").exists(),
        "no final weights yet"
    );

    let mut args = train_args(d, cut.to_str().unwrap());
    args.push("--resume");
    run_ok(&args);
    assert_eq!(
        read(&whole.join("vit.safetensors")),
        read(&cut.join("vit.safetensors")),
        "resumed ViT weights differ from the uninterrupted run"
    );
    for class in ["synth_fabric", "synth_cap"] {
        let info = |m: &Path| -> serde_json::Value {
            let cdir = m.join("classes").join(class);
            let v = String::from_utf8(read(&cdir.join("CURRENT"))).unwrap();
            serde_json::from_slice(&read(&cdir.join(v.trim()).join("class.json"))).unwrap()
        };
        assert_eq!(
            info(&whole)["thresholds"],
            info(&cut)["thresholds"],
            "{class}"
        );
    }
    assert!(!ckpt.exists(), "the spent checkpoint is removed");
    let _ = std::fs::remove_dir_all(&base);
}
