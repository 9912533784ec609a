//! Criterion bench of the ViT's CPU inference (`Vit::token_uncertainty`, the inspect hot path
//! of `--score product`): the tape-free forward written once over the backend op set
//! (`recon::vit_infer`) next to the autograd tape's no-grad forward of the same model, both
//! reduced to entropy + own-token cross-entropy. Small preset, |V| 8192, 8 images, 30 %
//! masked.
//!
//! `RAYON_NUM_THREADS=2 cargo bench --bench vit_infer`.

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use pmad::autograd::Tape;
use pmad::ops::softmax::{entropy_rows, logsumexp};
use pmad::recon::vit::{Vit, VitConfig};
use pmad::rng::Rng;
use rayon::prelude::*;
use std::time::Duration;

fn vit_infer(c: &mut Criterion) {
    let cfg = VitConfig::preset("small", 8192).expect("preset");
    let vit = Vit::new(cfg.clone(), 1).expect("vit");
    let batch = 8;
    let mut rng = Rng::new(2);
    let images: Vec<f32> = (0..batch * cfg.image_len()).map(|_| rng.normal()).collect();
    let mask: Vec<bool> = (0..batch * cfg.patches()).map(|i| i % 10 < 3).collect();
    let tokens: Vec<u32> = (0..batch * cfg.patches())
        .map(|i| (i % 8192) as u32)
        .collect();
    let mut g = c.benchmark_group("vit_infer");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function("small_b8_generic", |b| {
        b.iter(|| {
            vit.token_uncertainty(&images, &mask, Some(&tokens))
                .expect("forward")
        })
    });
    g.bench_function("small_b8_tape", |b| {
        b.iter(|| {
            let t = Tape::no_grad();
            let o = vit.forward(&t, &images, &mask).expect("forward");
            let logits = t.value(o.logits);
            let e = entropy_rows(&logits, 8192);
            let ce: Vec<f32> = logits
                .par_chunks(8192)
                .zip(o.rows.par_iter())
                .map(|(row, &r)| logsumexp(row) - row[tokens[r] as usize])
                .collect();
            (e, ce)
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .without_plots()
}

criterion_group! { name = benches; config = config(); targets = vit_infer }
criterion_main!(benches);
