//! The resident scoring pass ([`pmad::detector::resident`], what a GPU runs with every stage
//! on the device) on the CPU ops scores exactly as the staged CPU path: same maps, same image
//! scores, for every kind it covers, with a pixel-input ViT and with a feature-input ViT and
//! its codebook. So the GPU's pass (held to these ops op by op in tests/seam_parity.rs and
//! end to end in tests/cuda_e2e.rs) computes what the CPU reference computes.

mod common;

use pmad::detector::Detector;
use pmad::detector::model_dir::ScoreKind;
use pmad::detector::pipeline::load_inputs;

#[test]
fn resident_pass_equals_the_staged_path_on_the_cpu() {
    let Some(m) = common::one_class_model("resident-cpu", 21, 8, 2, 3) else {
        return;
    };
    let class = common::SYNTH_CLASS;
    for feature_input in [false, true] {
        let mut det = Detector::open(&m.model, Some(&m.weights)).unwrap();
        common::install_random_vit(&mut det, feature_input, 3 + feature_input as u64);
        let size = det.config.features.input_size;
        let x = load_inputs(&m.test, size).unwrap();
        let model = det.class(class).unwrap();
        let mut kinds = vec![ScoreKind::Distance, ScoreKind::Product, ScoreKind::Entropy];
        if feature_input {
            kinds.extend([ScoreKind::ProductCe, ScoreKind::CrossEntropy]);
        }
        for kind in kinds {
            let staged = det.score_inputs(class, &x, kind).unwrap();
            let resident = det.resident_maps(&model, &x, kind, true).unwrap();
            let scores_only = det.resident_maps(&model, &x, kind, false).unwrap();
            assert_eq!(staged.len(), m.test.len());
            assert_eq!(resident.len(), staged.len());
            for (i, (r, s)) in resident.iter().zip(&staged).enumerate() {
                let name = format!("{kind:?} (feature input {feature_input}) image {i}");
                assert_eq!(r.size, s.size, "{name}: size");
                assert_eq!(r.score, s.score, "{name}: score");
                assert_eq!(r.values, s.values, "{name}: map");
                assert_eq!(
                    scores_only[i].score, s.score,
                    "{name}: score without the map"
                );
                assert!(scores_only[i].values.is_empty(), "{name}: no map asked for");
            }
            // Not vacuous: the images score differently and the ViT kinds are not all zero.
            let scores: Vec<f32> = staged.iter().map(|s| s.score).collect();
            assert!(
                scores.iter().any(|&s| s != scores[0]) && scores.iter().all(|&s| s > 0.0),
                "{kind:?}: degenerate scores {scores:?}"
            );
            println!("{kind:?} feature input {feature_input}: scores {scores:?}");
        }
    }
}

/// A NaN in the ViT fails both paths with the same error (image and stage named), never a
/// score.
#[test]
fn a_nan_in_the_vit_fails_the_resident_pass_as_the_staged_one() {
    let Some(m) = common::one_class_model("resident-cpu-nan", 22, 6, 1, 2) else {
        return;
    };
    let class = common::SYNTH_CLASS;
    let mut det = Detector::open(&m.model, Some(&m.weights)).unwrap();
    common::install_random_vit(&mut det, true, 9);
    common::poison_vit(&mut det);
    let x = load_inputs(&m.test, det.config.features.input_size).unwrap();
    let model = det.class(class).unwrap();
    for kind in [ScoreKind::Product, ScoreKind::ProductCe] {
        let staged = det.score_inputs(class, &x, kind).unwrap_err().to_string();
        let resident = det
            .resident_maps(&model, &x, kind, false)
            .unwrap_err()
            .to_string();
        println!("{kind:?}: staged: {staged}\n  resident: {resident}");
        for e in [&staged, &resident] {
            assert!(e.contains("vit") && e.contains(class), "{kind:?}: {e}");
        }
        assert_eq!(staged, resident, "{kind:?}: the same error");
    }
}

/// More images than one pass holds (`CpuOps::CHUNK` = 32: the resident pass runs in chunks)
/// and a mask ratio of 0 (nothing masked: the ViT kinds score 0 everywhere) agree with the
/// staged path too.
#[test]
fn chunked_batches_and_an_empty_mask_agree() {
    let Some(m) = common::one_class_model("resident-cpu-chunks", 23, 6, 20, 15) else {
        return;
    };
    let class = common::SYNTH_CLASS;
    let mut det = Detector::open(&m.model, Some(&m.weights)).unwrap();
    common::install_random_vit(&mut det, true, 11);
    let x = load_inputs(&m.test, det.config.features.input_size).unwrap();
    use pmad::backend::InferOps;
    assert!(
        x.dim(0) > pmad::backend::CpuOps::CHUNK,
        "{} images",
        x.dim(0)
    );
    let model = det.class(class).unwrap();
    for ratio in [0.3, 0.0] {
        det.config.recon.as_mut().unwrap().mask_ratio = ratio;
        for kind in [ScoreKind::Distance, ScoreKind::ProductCe] {
            let staged = det.score_inputs(class, &x, kind).unwrap();
            let resident = det.resident_maps(&model, &x, kind, false).unwrap();
            let s: Vec<f32> = staged.iter().map(|m| m.score).collect();
            let r: Vec<f32> = resident.iter().map(|m| m.score).collect();
            assert_eq!(r, s, "{kind:?} ratio {ratio}");
            if kind == ScoreKind::ProductCe && ratio == 0.0 {
                assert!(s.iter().all(|&v| v == 0.0), "nothing masked: {s:?}");
            } else {
                assert!(s.iter().any(|&v| v != s[0]), "{kind:?}: degenerate {s:?}");
            }
        }
    }
}
