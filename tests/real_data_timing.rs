//! Measurements on the real data (`../shared/data/real`), too slow for CI: run them by hand,
//! e.g. `cargo test --release --test real_data_timing -- --ignored --nocapture`.
//! They print figures for the notes and check the results' shape, never a time limit (speed
//! goals live in benches).

mod common;

use pmad::detector::Detector;
use pmad::detector::coreset::{CoresetConfig, select_coreset};
use pmad::detector::model_dir::ModelConfig;

/// Greedy k-center over every patch of magnetic_tile's 400 normal images (313,600 patches,
/// as in the reference's 275 s figure), 10% kept, projected to 128 dimensions.
#[test]
#[ignore]
fn coreset_over_all_magnetic_tile_patches() {
    let (Some(shared), Some(_)) = (common::need_shared(), common::need_backbone()) else {
        return;
    };
    let data = pmad::data::dataset::ClassData::open(&shared.join("data/real"), "magnetic_tile")
        .expect("magnetic_tile");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmad-coreset-timing");
    let _ = std::fs::remove_dir_all(&dir);
    Detector::create(&dir, &ModelConfig::default()).unwrap();
    let det = Detector::open(&dir, None).unwrap();
    let t = std::time::Instant::now();
    let pool = det.embed_paths(&data.train, "embed").unwrap();
    let embed = t.elapsed().as_secs_f64();
    let dim = det.features().dim();
    let n = pool.len() / dim;
    let t = std::time::Instant::now();
    let sel = select_coreset(&pool, dim, &CoresetConfig::default());
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "magnetic_tile: {} images, {n} patches -> {} prototypes; embed {embed:.1} s, \
         greedy k-center {secs:.1} s ({} threads)",
        data.train.len(),
        sel.len(),
        rayon::current_num_threads()
    );
    assert_eq!(n, data.train.len() * det.features().grid().pow(2));
    assert_eq!(sel.len(), (n as f64 * 0.1).round() as usize);
    let _ = std::fs::remove_dir_all(&dir);
}
