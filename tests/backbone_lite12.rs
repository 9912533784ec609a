//! EfficientNet-Lite1 and -Lite2: the derived block lists load the released weights,
//! `pmad classify` names the sample photos, and a model's feature spec picks its backbone.

mod common;

use pmad::detector::features::{FeatureExtractor, FeatureSpec};
use pmad::models::{Backbone, EfficientNetLite};
use std::process::Command;
use std::sync::Arc;

/// Top-1 of each photo with `backbone` (its own resolution), through the CLI.
fn classify_top1(backbone: Backbone) {
    let Some(_) = common::need_backbone_for(backbone) else {
        return;
    };
    let Some(shared) = common::need_shared() else {
        return;
    };
    let s = shared.join("data/imagenet_samples");
    let photos = ["parrot", "cat", "dragonfly", "hot_dog"];
    let want: [&[&str]; 4] = [
        &["macaw"],
        &["Egyptian cat", "tabby"],
        &["dragonfly"],
        &["hotdog"],
    ];
    let out = Command::new(common::pmad_bin())
        .args(["classify", "--top", "1", "--backbone", backbone.name()])
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
    eprintln!("{backbone}:\n{text}");
    let top1: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("1. "))
        .collect();
    assert_eq!(top1.len(), photos.len(), "{text}");
    for (line, names) in top1.iter().zip(want) {
        let got = &line.trim_start()[3..];
        assert!(
            names.iter().any(|n| got.starts_with(n)),
            "{backbone}: expected one of {names:?}: {line}"
        );
    }
}

#[test]
fn lite1_classifies_the_photos() {
    classify_top1(Backbone::Lite1);
}

#[test]
fn lite2_classifies_the_photos() {
    classify_top1(Backbone::Lite2);
}

/// (backbone, photo, top-3 (class, probability)).
type Expected = (Backbone, &'static str, [(usize, f32); 3]);

/// Top-3 softmax probabilities on the Lite0 golden inputs (224x224, PyTorch-preprocessed),
/// from `scripts/lite_reference.py` (an independent float64 numpy forward).
#[test]
fn probabilities_match_an_independent_float64_reference() {
    let want: [Expected; 4] = [
        (
            Backbone::Lite1,
            "cat",
            [(285, 0.523906), (281, 0.169283), (282, 0.121145)],
        ),
        (
            Backbone::Lite2,
            "cat",
            [(285, 0.415629), (281, 0.286834), (282, 0.272490)],
        ),
        (
            Backbone::Lite1,
            "parrot",
            [(88, 0.974493), (92, 0.002542), (90, 0.001394)],
        ),
        (
            Backbone::Lite2,
            "parrot",
            [(88, 0.997984), (92, 0.000570), (90, 0.000469)],
        ),
    ];
    let Some(shared) = common::need_shared() else {
        return;
    };
    for (b, photo, top3) in want {
        let Some(w) = common::need_backbone_for(b) else {
            return;
        };
        let net = EfficientNetLite::load_as(&w, b).unwrap();
        let fx = shared.join(format!("fixtures/efficientnet_lite0/{photo}.safetensors"));
        let input = pmad::weights::SafeTensors::open(&fx)
            .unwrap()
            .tensor("input")
            .unwrap();
        let probs = pmad::ops::softmax::softmax(&net.forward(&input).unwrap());
        let p = probs.f32s();
        let got = pmad::ops::topk::topk_row(&p, 3);
        for ((c, want_p), &g) in top3.iter().zip(&got) {
            assert_eq!(g, *c, "{b} {photo}: top-3 {got:?}");
            assert!(
                (p[g] - want_p).abs() < 2e-4,
                "{b} {photo}: p[{g}] {} vs {want_p}",
                p[g]
            );
        }
    }
}

#[test]
fn variants_are_recognised_and_checked_at_load() {
    for b in [Backbone::Lite1, Backbone::Lite2] {
        let Some(w) = common::need_backbone_for(b) else {
            return;
        };
        let net = EfficientNetLite::load(&w).unwrap();
        assert_eq!(net.backbone(), b);
        // The same file as another variant: an error naming the variant and the tensor.
        let other = if b == Backbone::Lite1 {
            Backbone::Lite2
        } else {
            Backbone::Lite1
        };
        let e = EfficientNetLite::load_as(&w, other)
            .err()
            .expect("wrong variant must not load")
            .to_string();
        assert!(e.contains(&format!("EfficientNet-{other}")), "{e}");
        assert!(e.contains("_blocks."), "{e}");
        let e = EfficientNetLite::load_as(&w, Backbone::Lite0)
            .err()
            .expect("wrong variant must not load")
            .to_string();
        assert!(e.contains("21 blocks, expected 16"), "{e}");

        // Default taps: last blocks of stages 3 and 5, 28x28 grid at 224.
        let spec = FeatureSpec::for_backbone(b);
        assert_eq!(spec.taps, ["blocks.6", "blocks.14"]);
        let dim = if b == Backbone::Lite1 {
            40 + 112
        } else {
            48 + 120
        };
        assert_eq!(spec.geometry().unwrap(), (28, dim));
        let fx = FeatureExtractor::new(Arc::new(net), spec).unwrap();
        let x = pmad::Tensor::zeros(&[1, 3, 224, 224]);
        assert_eq!(fx.extract(&x).unwrap().shape(), &[1, 28 * 28, dim]);
        // A spec for another backbone does not run on this network.
        let net = Arc::new(EfficientNetLite::load(&w).unwrap());
        assert!(FeatureExtractor::new(net, FeatureSpec::default()).is_err());
    }
}

#[test]
fn old_model_json_defaults_to_lite0_and_unknown_backbones_are_rejected() {
    let old = r#"{"taps":["blocks.4","blocks.10"],"input_size":224,"pool":3}"#;
    let spec: FeatureSpec = serde_json::from_str(old).unwrap();
    assert_eq!(spec.backbone, Backbone::Lite0);
    assert_eq!(spec, FeatureSpec::default());
    let bad = r#"{"backbone":"lite7","taps":["blocks.4"],"input_size":224,"pool":3}"#;
    assert!(serde_json::from_str::<FeatureSpec>(bad).is_err());
    // Lite0 has no blocks.16; Lite1 does.
    let mut spec = FeatureSpec::for_backbone(Backbone::Lite1);
    spec.taps = vec!["blocks.16".into()];
    assert!(spec.geometry().is_ok());
    spec.backbone = Backbone::Lite0;
    let e = spec.geometry().unwrap_err().to_string();
    assert!(e.contains("lite0") && e.contains("blocks.16"), "{e}");
}

#[test]
fn a_model_names_the_missing_backbone_file_and_the_fetch_command() {
    let dir = std::env::temp_dir().join(format!("pmad-lite12-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = pmad::detector::model_dir::ModelConfig {
        features: FeatureSpec::for_backbone(Backbone::Lite2),
        ..Default::default()
    };
    pmad::detector::Detector::create(&dir, &config).unwrap();
    let missing = dir.join("efficientnet_lite2.safetensors");
    let e = pmad::detector::Detector::open(&dir, Some(&missing))
        .err()
        .expect("no weights: no detector")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.contains("efficientnet_lite2.safetensors"), "{e}");
    assert!(e.contains("pmad fetch-weights --backbone lite2"), "{e}");
}
