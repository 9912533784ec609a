//! Criterion benches of the CPU kernels: GEMM, attention, convs and the nearest-prototype
//! search, at the shapes of `pmad::bench::cases()` (defined once there; `pmad bench` times the
//! same cases without criterion). Throughput is in elements/s where one element is one FLOP.
//!
//! `cargo bench --bench kernels [-- FILTER]`; threads: `RAYON_NUM_THREADS=2 cargo bench ...`.

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use pmad::bench::{Config, Spec, cases};
use std::time::Duration;

fn kernels(c: &mut Criterion) {
    let cfg = Config::default();
    for case in cases() {
        let group_name = match case.spec {
            Spec::Gemm { .. } => "gemm",
            Spec::Attention { .. } | Spec::AttentionBackward { .. } => "attention",
            Spec::Conv { .. } => "conv",
            Spec::Nearest { .. } | Spec::ClusteredNearest { .. } => "nn",
            Spec::Backbone { .. } | Spec::Features { .. } => continue, // benches/backbone.rs
        };
        let mut f = case.prepare(&cfg).expect("kernel cases always prepare");
        let mut group = c.benchmark_group(group_name);
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(case.spec.work() as u64));
        group.bench_function(case.name.as_str(), |b| b.iter(&mut f));
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}

criterion_group! { name = benches; config = config(); targets = kernels }
criterion_main!(benches);
