//! Paths shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project's `shared/` folder (fixtures, real data): `$PMAD_SHARED`, else `../shared`
/// beside the repository. A fresh user machine does not have it; tests that need it skip.
pub fn shared_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("PMAD_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    p.is_dir().then_some(p)
}

/// The converted backbone weights (made by `pmad fetch-weights`, which `.ci/run` runs first).
pub fn backbone_weights() -> Option<PathBuf> {
    let p = pmad::models::efficientnet::default_weights_dir()
        .join(pmad::models::efficientnet::WEIGHTS_FILE);
    p.is_file().then_some(p)
}

/// Whether tests that need data must fail instead of skipping (set in CI).
pub fn required() -> bool {
    std::env::var_os("PMAD_REQUIRE_ASSETS").is_some()
}

/// Whether the CUDA device must be used (`PMAD_REQUIRE_GPU` set to anything but empty or `0`;
/// `scripts/device_check.sh` sets it): a CUDA test fails instead of skipping. The same rule as
/// `pmad::cuda::gpu_required`, which exists only with the `cuda` feature.
pub fn gpu_required() -> bool {
    std::env::var("PMAD_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The backbone weights, or None (skip, with a printed reason). In CI (`PMAD_REQUIRE_ASSETS`)
/// a missing file fails the test: the test command fetches it first.
pub fn need_backbone() -> Option<PathBuf> {
    let w = backbone_weights();
    if w.is_none() {
        assert!(
            !required(),
            "backbone weights are required (PMAD_REQUIRE_ASSETS) but missing"
        );
        eprintln!("skipped: backbone weights not found (run `pmad fetch-weights`)");
    }
    w
}

/// The converted weights of `backbone` (`pmad fetch-weights --backbone X`), or None (skip,
/// with a printed reason); a missing file fails under `PMAD_REQUIRE_ASSETS`.
pub fn need_backbone_for(backbone: pmad::models::Backbone) -> Option<PathBuf> {
    let p = pmad::models::efficientnet::default_weights_dir().join(backbone.weights_file());
    if !p.is_file() {
        assert!(
            !required(),
            "{} weights are required (PMAD_REQUIRE_ASSETS) but missing: {}",
            backbone,
            p.display()
        );
        eprintln!(
            "skipped: {} not found (run `pmad fetch-weights --backbone {backbone}`)",
            p.display()
        );
        return None;
    }
    Some(p)
}

/// The shared/ folder, or None (skip, with a printed reason): a user's clone may not have it.
pub fn need_shared() -> Option<PathBuf> {
    let s = shared_dir();
    if s.is_none() {
        eprintln!("skipped: ../shared (fixtures and real data) not found; set PMAD_SHARED");
    }
    s
}

pub fn pmad_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pmad"))
}

/// Runs the `pmad` binary with `args`.
pub fn pmad(args: &[&str]) -> std::process::Output {
    std::process::Command::new(pmad_bin())
        .args(args)
        .output()
        .unwrap()
}

/// Runs the `pmad` binary, asserts that it succeeded (showing its stderr if not) and returns
/// its stdout.
pub fn pmad_ok(args: &[&str]) -> String {
    let out = pmad(args);
    assert!(
        out.status.success(),
        "pmad {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A model directory with one synthetic class registered, for the tests that need a class to
/// score against (built by [`one_class_model`]).
pub struct OneClassModel {
    /// The test's folder under `CARGO_TARGET_TMPDIR` (data `mv/` and `model/` inside).
    pub base: PathBuf,
    /// The model directory.
    pub model: PathBuf,
    /// The backbone weights it was built with.
    pub weights: PathBuf,
    /// The class's normal training images (registered).
    pub train: Vec<PathBuf>,
    /// The class's test images, defect folders and `good` in sorted folder order.
    pub test: Vec<PathBuf>,
}

/// The class [`one_class_model`] registers (the first `pmad synth` class).
pub const SYNTH_CLASS: &str = "synth_fabric";

/// `pmad synth` data (one class, 96 px, `seed`, `train` normal and `test_good` + `test_bad`
/// test images) in `CARGO_TARGET_TMPDIR/name/mv`, and a default model with the class
/// registered from its training images. None (skip) without the backbone weights.
pub fn one_class_model(
    name: &str,
    seed: u64,
    train: usize,
    test_good: usize,
    test_bad: usize,
) -> Option<OneClassModel> {
    use pmad::detector::Detector;
    use pmad::detector::pipeline::list_images;
    let weights = need_backbone()?;
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&base);
    // `mv/`, as the README's examples name the synthetic data (tests/serve.rs runs one).
    let data = base.join("mv");
    let cfg = pmad::data::SynthConfig {
        classes: 1,
        seed,
        train,
        test_good,
        test_bad,
        size: 96,
        force: false,
    };
    pmad::data::synth::generate(&data, &cfg).unwrap();
    let model = base.join("model");
    Detector::create(&model, &pmad::detector::model_dir::ModelConfig::default()).unwrap();
    let mut det = Detector::open(&model, Some(&weights)).unwrap();
    let class_dir = data.join(SYNTH_CLASS);
    let train = list_images(&class_dir.join("train/good")).unwrap();
    det.register(SYNTH_CLASS, &train).unwrap();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(class_dir.join("test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let mut test = Vec::new();
    for d in dirs {
        test.extend(list_images(&d).unwrap());
    }
    Some(OneClassModel {
        base,
        model,
        weights,
        train,
        test,
    })
}

/// Installs a small random ViT on `det` for the reconstruction-stage scores, with weights
/// wider than the init's (std 0.15, not 0.02) so that every layer changes the entropy and a
/// wrong stage shows. `feature_input`: the ViT reads the pooled patch features (as `pmad
/// train` makes it) and a random codebook of its vocabulary gives each patch its own token
/// (the `product-ce` kinds); otherwise it reads pixels, with external token ids.
#[allow(dead_code)]
pub fn install_random_vit(det: &mut pmad::detector::Detector, feature_input: bool, seed: u64) {
    use pmad::detector::model_dir::{ReconConfig, TOKENIZER_FILE};
    use pmad::recon::tokenizer::Codebook;
    use pmad::recon::vit::{Vit, VitConfig};
    let vocab = 97;
    let dim = det.features().dim();
    let vit_cfg = VitConfig {
        image_size: det.config.features.input_size,
        patch: 16,
        width: 64,
        depth: 2,
        decoder_depth: 1,
        heads: 2,
        mlp: 96,
        vocab,
        input_dim: if feature_input { dim } else { 0 },
    };
    let mut vit = Vit::new(vit_cfg.clone(), seed).unwrap();
    let mut rng = pmad::rng::Rng::new(seed ^ 0xE2E);
    let ids: Vec<_> = vit.params().ids().collect();
    for id in ids {
        for v in vit.params_mut().values_mut(id) {
            *v = rng.normal() * 0.15;
        }
    }
    let tokens = if feature_input {
        // Codes on the scale of the (post-ReLU6, pooled) features, so assignments vary.
        let codes: Vec<f32> = (0..vocab * dim).map(|_| rng.range(0.0, 2.0)).collect();
        Codebook::new(codes, dim)
            .unwrap()
            .save(det.dir().join(TOKENIZER_FILE))
            .unwrap();
        "codebook"
    } else {
        "external"
    };
    det.set_vit(
        vit,
        ReconConfig {
            preset: "test".into(),
            vit: vit_cfg,
            vocab,
            mask_ratio: 0.3,
            tokens: tokens.into(),
            trained_on: Vec::new(),
        },
    )
    .unwrap();
}

/// Puts a NaN into the detector's ViT head bias (in memory and in its model directory: a
/// corrupt model as a bad write could leave it), so every masked patch's entropy is NaN.
#[allow(dead_code)]
pub fn poison_vit(det: &mut pmad::detector::Detector) {
    let mut vit = det.vit().expect("a ViT").clone();
    let id = vit.params().id("head.bias").expect("head.bias");
    vit.params_mut().values_mut(id)[0] = f32::NAN;
    let recon = det.config.recon.clone().expect("recon config");
    det.set_vit(vit, recon).unwrap();
}
