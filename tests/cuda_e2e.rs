//! End to end through the CUDA backend: a small `Detector` (synthetic class, default features,
//! a pixel-input or a feature-input ViT with a codebook) inspects the same images with
//! `Device::Cpu` (the staged path) and `Device::Cuda` (the resident pass: every stage on the
//! device); scores, maps and verdicts must agree, and without maps only the scores and the
//! stage flags come down.
//!
//! In CI this runs on the emulated device (`cargo test --features cuda-emu`): the CUDA
//! backend's host code — uploads, launch grids, parameter blocks, the stage order, cuBLAS
//! configurations — runs for real, its kernels as host C++ and cuBLAS as the CPU GEMM (see
//! `src/cuda/launch.rs`). On a GPU machine (`--features cuda`, `scripts/device_check.sh`) the
//! same test runs on the GPU. Without a device it skips, unless `PMAD_REQUIRE_GPU=1`.
#![cfg(feature = "cuda")]

mod common;

use std::path::PathBuf;

use pmad::cuda::{CudaDevice, CudaError};
use pmad::detector::Detector;
use pmad::detector::device::Device;
use pmad::detector::model_dir::{ModelConfig, ScoreKind};
use pmad::detector::pipeline::list_images;

/// Whether a CUDA device (a GPU, or the emulated one in a `cuda-emu` build) is usable; prints
/// why not and returns false otherwise (a failure with `PMAD_REQUIRE_GPU=1`).
fn have_device() -> bool {
    match CudaDevice::shared() {
        Ok(d) => {
            println!("device: {d:?}");
            true
        }
        Err(CudaError::Unavailable(reason)) => {
            assert!(
                !pmad::cuda::gpu_required(),
                "PMAD_REQUIRE_GPU is set but there is no usable CUDA device: {reason}"
            );
            println!("skipped: no CUDA device ({reason})");
            false
        }
        Err(e) => panic!("opening the CUDA device failed: {e}"),
    }
}

/// `|a - b| <= atol + rtol |b|` for every element; prints and returns the largest error.
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite() == w.is_finite(), "{what}[{i}]: {g} vs {w}");
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: cuda {g} vs cpu {w} (|err| {err:e} > {atol:e} + {rtol:e}|cpu|)"
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
    worst.0
}

#[test]
fn inspect_cpu_vs_cuda() {
    let Some(weights) = common::need_backbone() else {
        return;
    };
    if !have_device() {
        return;
    }
    // Data: one synthetic class, 96 px images.
    // PMAD_TEST_TMPDIR: the device kit runs this binary on a machine without the build tree.
    let tmp = std::env::var_os("PMAD_TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let base = tmp.join("cuda-e2e");
    let _ = std::fs::remove_dir_all(&base);
    let data = base.join("mv");
    let cfg = pmad::data::SynthConfig {
        classes: 1,
        seed: 11,
        train: 8,
        test_good: 2,
        test_bad: 4,
        size: 96,
        force: false,
    };
    pmad::data::synth::generate(&data, &cfg).unwrap();
    let class = common::SYNTH_CLASS;
    let class_dir = data.join(class);

    // The test images (good and defective), decoded once.
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(class_dir.join("test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let paths: Vec<PathBuf> = dirs.iter().flat_map(|d| list_images(d).unwrap()).collect();
    assert_eq!(paths.len(), 6, "synthetic test images: {paths:?}");
    let images: Vec<_> = paths
        .iter()
        .map(|p| pmad::data::image::load_rgb(p).unwrap())
        .collect();

    // Two models: default features (Lite0, 224 input, 28x28 grid) and a small random ViT
    // (14x14 patches of 16 px) reading the pixels, or the pooled features with a codebook
    // (as `pmad train` makes it; the own-token kinds).
    for feature_input in [false, true] {
        let model = base.join(format!("model-{feature_input}"));
        Detector::create(&model, &ModelConfig::default()).unwrap();
        let mut det = Detector::open(&model, Some(&weights)).unwrap();
        common::install_random_vit(&mut det, feature_input, 5);
        det.register(class, &list_images(&class_dir.join("train/good")).unwrap())
            .unwrap();
        compare_backends(&model, &weights, class, &images, &paths, feature_input);
        compare_bf16(&model, &weights, class, &images);
        if feature_input {
            // Fail closed on the device: a NaN in the ViT is an error naming the stage (the
            // flags read back before any score), never a score.
            common::poison_vit(&mut det);
            det.set_device(Device::Cuda).unwrap();
            det.config.score = ScoreKind::Product;
            let e = det.inspect_batch(class, &images).unwrap_err().to_string();
            println!("poisoned ViT on the device: {e}");
            assert!(e.contains("vit") && e.contains(class), "{e}");
        }
    }
}

/// `inspect` of `images` on both backends: scores, maps and verdicts agree; without maps
/// the GPU sends down only scores and flags.
fn compare_backends(
    model: &std::path::Path,
    weights: &std::path::Path,
    class: &str,
    images: &[pmad::data::image::RgbImage],
    paths: &[PathBuf],
    feature_input: bool,
) {
    let (model, weights) = (&model.to_path_buf(), &weights.to_path_buf());
    let mut cpu = Detector::open(model, Some(weights)).unwrap();
    let mut gpu = Detector::open(model, Some(weights)).unwrap();
    gpu.set_device(Device::Cuda).unwrap();
    assert_eq!(gpu.device(), Device::Cuda);

    // The distance score (backbone + search) and the ViT scores (+ proposal mask, ViT,
    // entropy) on the same images, resident on the device. Both sides compute in f32 with
    // different summation orders (cuBLAS or the emulated GEMM vs the CPU's blocking, tree vs
    // serial reductions) through ~25 layers.
    let mut kinds = vec![
        (ScoreKind::Distance, 2e-4, 2e-4),
        (ScoreKind::Product, 1e-3, 1e-3),
        (ScoreKind::Entropy, 1e-3, 1e-3),
    ];
    if feature_input {
        kinds.push((ScoreKind::ProductCe, 1e-3, 1e-3));
    }
    for (kind, atol, rtol) in kinds {
        let kind_name = format!("{kind:?} (feature input {feature_input})");
        cpu.config.score = kind;
        gpu.config.score = kind;
        let want = cpu.inspect_batch(class, images).unwrap();
        let got = gpu.inspect_batch(class, images).unwrap();
        // Scores only: what comes down is the scores and one row of stage flags per image.
        let before = gpu.device_bytes_copied().unwrap();
        let scores_only = gpu.inspect_batch_with(class, images, false).unwrap();
        let after = gpu.device_bytes_copied().unwrap();
        let (up, down) = (after.0 - before.0, after.1 - before.1);
        let n = images.len() as u64;
        println!(
            "{kind_name}: host->device {} B/image, device->host {} B/image",
            up / n,
            down / n
        );
        assert_eq!(
            down,
            n * 4 * (1 + pmad::backend::SCORE_STAGES.len() as u64),
            "{kind_name}: bytes down"
        );
        for (s, g) in scores_only.iter().zip(&got) {
            assert_eq!(s.map.score, g.map.score, "{kind_name}: score without maps");
            assert!(s.map.values.is_empty());
        }
        assert_eq!(got.len(), want.len());
        let mut worst_map = 0.0f32;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let name = format!("{kind_name} {}", paths[i].display());
            assert_eq!(g.map.size, w.map.size, "{name}: map size");
            worst_map = worst_map.max(assert_close(
                &format!("{name} map"),
                &g.map.values,
                &w.map.values,
                atol,
                rtol,
            ));
            assert_close(
                &format!("{name} score"),
                &[g.map.score],
                &[w.map.score],
                atol,
                rtol,
            );
            assert_eq!(g.threshold, w.threshold, "{name}: threshold");
            // The verdict must agree unless the score sits within the tolerance of the
            // threshold (then either side of it is right).
            let margin = (w.map.score - w.threshold).abs();
            if margin > atol + rtol * w.threshold.abs() {
                assert_eq!(g.anomalous, w.anomalous, "{name}: verdict");
            }
            println!(
                "{name}: score cuda {} cpu {} threshold {} anomalous {}",
                g.map.score, w.map.score, w.threshold, w.anomalous
            );
        }
        // Not a vacuous comparison: the maps carry signal, and the images get different scores.
        let scores: Vec<f32> = want.iter().map(|w| w.map.score).collect();
        assert!(
            scores.iter().any(|&s| s != scores[0]) && scores.iter().all(|&s| s > 0.0),
            "{kind_name}: degenerate scores {scores:?}"
        );
        println!("{kind_name}: largest map |cuda - cpu| {worst_map:e}");
    }
}

/// `--precision bf16` (the GEMMs on bf16 operands, f32 accumulation) against the CPU's f32:
/// the scores within the rounding's reach, the verdicts equal away from the threshold, the
/// images in the same order. Measured on the emulated device (its bf16 GEMM = the CPU GEMM on
/// the rounded operands), both models: largest relative score error 2.5e-3 for distance and
/// for product; the tolerance is 3x that.
fn compare_bf16(
    model: &std::path::Path,
    weights: &std::path::Path,
    class: &str,
    images: &[pmad::data::image::RgbImage],
) {
    use pmad::backend::Precision;
    let mut cpu = Detector::open(model, Some(weights)).unwrap();
    let mut gpu = Detector::open(model, Some(weights)).unwrap();
    gpu.set_backend(Device::Cuda, Precision::Bf16).unwrap();
    assert_eq!(gpu.precision(), Precision::Bf16);
    for (kind, rtol) in [(ScoreKind::Distance, 0.0075), (ScoreKind::Product, 0.0075)] {
        cpu.config.score = kind;
        gpu.config.score = kind;
        let want = cpu.inspect_batch_with(class, images, false).unwrap();
        let got = gpu.inspect_batch_with(class, images, false).unwrap();
        let mut worst = 0.0f32;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let rel = (g.map.score - w.map.score).abs() / w.map.score.abs();
            println!(
                "bf16 {kind:?} [{i}]: score {} vs f32 cpu {} (rel {rel:.2e}), threshold {}",
                g.map.score, w.map.score, w.threshold
            );
            assert!(
                rel <= rtol,
                "bf16 {kind:?} [{i}]: relative error {rel:e} > {rtol}"
            );
            worst = worst.max(rel);
            if (w.map.score - w.threshold).abs() > rtol * w.threshold.abs() {
                assert_eq!(g.anomalous, w.anomalous, "bf16 {kind:?} [{i}]: verdict");
            }
        }
        // The ranking of clearly separated images is kept.
        for a in 0..want.len() {
            for b in 0..want.len() {
                let (wa, wb) = (want[a].map.score, want[b].map.score);
                if wa > wb * (1.0 + 2.0 * rtol) {
                    assert!(
                        got[a].map.score > got[b].map.score,
                        "bf16 {kind:?}: order {a} {b}"
                    );
                }
            }
        }
        println!("bf16 {kind:?}: largest relative score error {worst:.2e}");
    }
}
