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
