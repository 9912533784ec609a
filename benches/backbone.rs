//! Criterion benches of the EfficientNet-Lite0 backbone at 224x224: the full pass to logits,
//! the pass to `blocks.10` (what anomaly detection runs) and the production patch-feature
//! extraction (`features_*`), as in `pmad::bench::cases()`. Throughput is in elements/s where one element is one image.
//! Skipped (with a note) when the weights are missing: run `pmad fetch-weights` first.
//!
//! `cargo bench --bench backbone`; threads: `RAYON_NUM_THREADS=2 cargo bench ...`.

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use pmad::bench::{Config, Spec, cases};
use std::time::Duration;

fn backbone(c: &mut Criterion) {
    let cfg = Config::default();
    for case in cases() {
        if !matches!(case.spec, Spec::Backbone { .. } | Spec::Features { .. }) {
            continue; // benches/kernels.rs
        }
        let mut f = match case.prepare(&cfg) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("skipping {}: {e}", case.name);
                continue;
            }
        };
        let mut group = c.benchmark_group("backbone");
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(case.spec.work() as u64));
        group.bench_function(case.name.as_str(), |b| b.iter(&mut f));
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
}

criterion_group! { name = benches; config = config(); targets = backbone }
criterion_main!(benches);
