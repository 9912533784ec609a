//! EfficientNet-Lite0 on the engine against the PyTorch golden fixtures, and `pmad classify`
//! on real photos.

mod common;

use pmad::models::EfficientNetLite0;
use pmad::weights::SafeTensors;
use std::process::Command;

const TAPS: [&str; 5] = ["stem", "blocks.2", "blocks.4", "blocks.10", "blocks.15"];

#[test]
fn every_fixture_tensor_matches_pytorch() {
    let Some(weights) = common::need_backbone() else {
        return;
    };
    let Some(shared) = common::need_shared() else {
        return;
    };
    let net = EfficientNetLite0::load(&weights).unwrap();
    let dir = shared.join("fixtures/efficientnet_lite0");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let fx = SafeTensors::open(&path).unwrap();
        let input = fx.tensor("input").unwrap();
        let (logits, taps) = net.forward_with_taps(&input, &TAPS).unwrap();
        let mut got = taps;
        got.push(("logits".to_string(), logits.clone()));
        for (name, t) in &got {
            let want = fx.tensor(name).unwrap();
            let tol = 1e-4 * want.max_abs();
            let diff = t.max_abs_diff(&want).unwrap();
            eprintln!(
                "{}: {name:<9} max|a-b| {diff:.3e}  (tol {tol:.3e})",
                path.file_name().unwrap().to_string_lossy()
            );
            assert!(
                diff <= tol,
                "{}: {name} differs by {diff} > {tol}",
                path.display()
            );
        }
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        assert_eq!(
            argmax(&logits.f32s()),
            argmax(&fx.tensor("logits").unwrap().f32s()),
            "top-1"
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the parrot and cat fixtures, found {checked}"
    );
}

#[test]
fn taps_are_consistent_with_a_full_pass_and_batching() {
    let Some(weights) = common::need_backbone() else {
        return;
    };
    let net = EfficientNetLite0::load(&weights).unwrap();
    let mut r = pmad::rng::Rng::new(3);
    let x = pmad::Tensor::new(
        (0..2 * 3 * 64 * 80).map(|_| r.range(-1.0, 1.0)).collect(),
        &[2, 3, 64, 80],
    )
    .unwrap();
    let early = net.forward_taps(&x, &["blocks.4", "stem"]).unwrap();
    assert_eq!(early[0].1.shape(), &[2, 40, 8, 10]);
    assert_eq!(early[1].1.shape(), &[2, 32, 32, 40]);
    let (_, full) = net.forward_with_taps(&x, &["blocks.4"]).unwrap();
    assert_eq!(full[0].1.max_abs_diff(&early[0].1).unwrap(), 0.0);
    // Batch item 1 alone gives the same map as inside the batch.
    let one = net
        .forward_taps(&x.narrow0(1, 2).unwrap(), &["blocks.4"])
        .unwrap();
    assert!(
        one[0]
            .1
            .max_abs_diff(&early[0].1.narrow0(1, 2).unwrap())
            .unwrap()
            < 1e-5
    );
    assert!(net.forward_taps(&x, &["blocks.16"]).is_err());
}

#[test]
fn wrong_channel_count_is_a_clear_error() {
    let Some(weights) = common::need_backbone() else {
        return;
    };
    let net = EfficientNetLite0::load(&weights).unwrap();
    let gray = pmad::Tensor::zeros(&[1, 1, 224, 224]);
    let err = net.forward(&gray).unwrap_err().to_string();
    assert!(err.contains("1 channels"), "{err}");
}

#[test]
fn classify_names_the_five_photos() {
    let Some(_) = common::need_backbone() else {
        return;
    };
    let Some(shared) = common::need_shared() else {
        return;
    };
    let s = shared.join("data/imagenet_samples");
    let photos = ["parrot", "cat", "dragonfly", "hot_dog", "grace_hopper"];
    let want = [
        "macaw",
        "Egyptian cat",
        "dragonfly",
        "hotdog",
        "military uniform",
    ];
    let out = Command::new(common::pmad_bin())
        .arg("classify")
        .arg("--labels")
        .arg(s.join("imagenet_labels.txt"))
        .args(photos.iter().map(|p| s.join(format!("{p}.png"))))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let top1: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("1. "))
        .collect();
    assert_eq!(top1.len(), 5, "{text}");
    for (line, name) in top1.iter().zip(want) {
        assert!(
            line.trim_start()[3..].starts_with(name),
            "expected {name}: {line}"
        );
    }
}
