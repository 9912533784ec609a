//! Criterion benches of the CUDA kernels (feature `cuda`), at the shapes PMAD runs: the ViT's
//! attention and GEMMs (small and base presets, batch 64 x 196 tokens), the nearest-prototype
//! search (a batch of 8 images' 784 patches against 16k and 100k-prototype banks), top-k
//! proposal masking, token entropy over |V| = 8192, the coupling layer, the glue ops, the
//! backbone's feature extraction and the whole ViT inference forward. Every timed call ends with a device synchronize, so a sample
//! is the wall time of the work, not of the launch.
//!
//! `cargo bench --features cuda --bench cuda_kernels [-- FILTER]`. Without a usable GPU it
//! prints why and measures nothing.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pmad::cuda::attention::{AttentionDims, attention_fwd};
use pmad::cuda::coupling::coupling_fwd;
use pmad::cuda::entropy::entropy_fwd;
use pmad::cuda::glue::{gaussian_blur, layernorm_fwd};
use pmad::cuda::linear::linear;
use pmad::cuda::proto_nn::{ProtoBank, proto_nn};
use pmad::cuda::topk_mask::topk_mask;
use pmad::cuda::vit::CudaVit;
use pmad::cuda::{CudaDevice, CudaSlice};
use pmad::recon::vit::{Vit, VitConfig};
use pmad::rng::Rng;

fn randn(dev: &CudaDevice, n: usize, rng: &mut Rng) -> CudaSlice<f32> {
    let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    dev.upload(&v).expect("upload")
}

/// Times `f` (then a synchronize) as one criterion function with `work` elements per call.
fn time<F: FnMut()>(
    c: &mut Criterion,
    dev: &Arc<CudaDevice>,
    group: &str,
    name: &str,
    work: u64,
    mut f: F,
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(work));
    g.bench_function(name, |b| {
        b.iter(|| {
            f();
            dev.synchronize().expect("synchronize");
        })
    });
    g.finish();
}

fn cuda_kernels(c: &mut Criterion) {
    let dev = match CudaDevice::shared() {
        Ok(d) => d,
        Err(e) => {
            println!("cuda_kernels: skipped ({e})");
            return;
        }
    };
    let mut rng = Rng::new(0xBE7C);

    // Fused attention: FLOPs = 4 B H N² D (QKᵀ and PV).
    for (heads, head_dim) in [(3, 64), (12, 64)] {
        let dims = AttentionDims {
            batch: 64,
            seq: 196,
            heads,
            head_dim,
        };
        let (q, k, v) = (
            randn(&dev, dims.numel(), &mut rng),
            randn(&dev, dims.numel(), &mut rng),
            randn(&dev, dims.numel(), &mut rng),
        );
        let flops = 4 * 64 * heads * 196 * 196 * head_dim;
        time(
            c,
            &dev,
            "attention",
            &format!("fwd_b64_n196_h{heads}_d{head_dim}"),
            flops as u64,
            || {
                attention_fwd(&dev, &q, &k, &v, dims, None).expect("attention");
            },
        );
    }

    // Nearest prototype: FLOPs = 2 Q P D (f32, and the bank stored as f16).
    for (protos, dim) in [(16_384, 152), (100_000, 272)] {
        let nq = 8 * 784;
        let q = randn(&dev, nq * dim, &mut rng);
        let bank_host: Vec<f32> = (0..protos * dim).map(|_| rng.normal()).collect();
        let bank = dev.upload(&bank_host).expect("upload");
        let bank16: Vec<u16> = bank_host
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        let bank16 = dev.upload(&bank16).expect("upload");
        let flops = (2 * nq * protos * dim) as u64;
        time(
            c,
            &dev,
            "proto_nn",
            &format!("f32_{nq}x{protos}x{dim}"),
            flops,
            || {
                proto_nn(&dev, &q, ProtoBank::F32(&bank), nq, protos, dim).expect("proto_nn");
            },
        );
        time(
            c,
            &dev,
            "proto_nn",
            &format!("f16_{nq}x{protos}x{dim}"),
            flops,
            || {
                proto_nn(&dev, &q, ProtoBank::F16(&bank16), nq, protos, dim).expect("proto_nn");
            },
        );
    }

    // Proposal masking: 64 images x 196 patches, top 30%.
    let scores = randn(&dev, 64 * 196, &mut rng);
    time(c, &dev, "topk_mask", "b64_n196_k59", 64 * 196, || {
        topk_mask(&dev, &scores, 64, 196, 59).expect("topk");
    });

    // Token entropy + cross-entropy: 64 images x 59 masked patches over |V| = 8192.
    let rows = 64 * 59;
    let logits = randn(&dev, rows * 8192, &mut rng);
    let targets: Vec<i32> = (0..rows).map(|i| (i * 37 % 8192) as i32).collect();
    let targets = dev.upload(&targets).expect("upload");
    time(
        c,
        &dev,
        "entropy",
        &format!("r{rows}_v8192"),
        (rows * 8192) as u64,
        || {
            entropy_fwd(&dev, &logits, rows, 8192, Some(&targets), false).expect("entropy");
        },
    );

    // Coupling layer on a batch of residuals: 8 images x 784 patches, half of 152 channels.
    let (cr, cc) = (8 * 784, 76);
    let (x2, s, t) = (
        randn(&dev, cr * cc, &mut rng),
        randn(&dev, cr * cc, &mut rng),
        randn(&dev, cr * cc, &mut rng),
    );
    time(
        c,
        &dev,
        "coupling",
        &format!("fwd_{cr}x{cc}"),
        (cr * cc) as u64,
        || {
            coupling_fwd(&dev, &x2, &s, &t, cr, cc, 1.9).expect("coupling");
        },
    );

    // Glue: layernorm and a GEMM + bias at the base ViT's width; the map blur.
    let (lr, lc) = (64 * 196, 768);
    let x = randn(&dev, lr * lc, &mut rng);
    let (g, b) = (randn(&dev, lc, &mut rng), randn(&dev, lc, &mut rng));
    time(
        c,
        &dev,
        "glue",
        &format!("layernorm_{lr}x{lc}"),
        (lr * lc) as u64,
        || {
            layernorm_fwd(&dev, &x, &g, &b, lr, lc, 1e-6).expect("layernorm");
        },
    );
    let w = randn(&dev, 3072 * lc, &mut rng);
    let bias = randn(&dev, 3072, &mut rng);
    time(
        c,
        &dev,
        "glue",
        &format!("linear_{lr}x{lc}to3072"),
        (2 * lr * lc * 3072) as u64,
        || {
            linear(&dev, &x, &w, &bias, None, lr, lc, 3072).expect("linear");
        },
    );
    let maps = randn(&dev, 64 * 256 * 256, &mut rng);
    time(
        c,
        &dev,
        "glue",
        "blur_64x256x256_s4",
        (64 * 256 * 256) as u64,
        || {
            gaussian_blur(&dev, &maps, 64, 256, 256, 4.0).expect("blur");
        },
    );

    // The backbone's feature extraction (EfficientNet-Lite0 to blocks.10 + PaDiM pooling),
    // 64 images at 224, from host input to device feature rows (needs the fetched weights).
    let path = pmad::models::efficientnet::default_weights_dir()
        .join(pmad::models::efficientnet::WEIGHTS_FILE);
    match pmad::models::EfficientNetLite0::load(&path) {
        Ok(net) => {
            let fx = pmad::detector::FeatureExtractor::new(
                Arc::new(net),
                pmad::detector::FeatureSpec::default(),
            )
            .expect("feature spec");
            let gf = pmad::cuda::backbone::CudaFeatures::upload(dev.clone(), &fx).expect("upload");
            let batch = 64;
            let x: Vec<f32> = (0..batch * 3 * 224 * 224).map(|_| rng.normal()).collect();
            time(
                c,
                &dev,
                "backbone",
                "features_b64_224",
                batch as u64,
                || {
                    gf.extract(&x, batch).expect("features");
                },
            );
        }
        Err(e) => println!("backbone bench skipped: {e}"),
    }

    // The whole ViT inference forward (small and base presets, |V| 8192), 64 images, 30%
    // masked, entropy + cross-entropy; includes the host unfold and the upload.
    for preset in ["small", "base"] {
        let cfg = VitConfig::preset(preset, 8192).expect("preset");
        let vit = Vit::new(cfg.clone(), 1).expect("vit");
        let gv = CudaVit::upload(dev.clone(), &vit).expect("upload vit");
        let batch = 64;
        let images: Vec<f32> = (0..batch * cfg.image_len()).map(|_| rng.normal()).collect();
        let mask: Vec<bool> = (0..batch * cfg.patches()).map(|i| i % 10 < 3).collect();
        let tokens: Vec<u32> = (0..batch * cfg.patches())
            .map(|i| (i % 8192) as u32)
            .collect();
        time(
            c,
            &dev,
            "vit",
            &format!("{preset}_forward_b{batch}"),
            batch as u64,
            || {
                gv.token_uncertainty(&images, &mask, Some(&tokens))
                    .expect("vit forward");
            },
        );
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .without_plots()
}

criterion_group! { name = benches; config = config(); targets = cuda_kernels }
criterion_main!(benches);
