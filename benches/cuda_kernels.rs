//! Criterion benches of the CUDA kernels (feature `cuda`), at the shapes PMAD runs: the ViT's
//! attention (f32, and bf16 on tensor cores) and GEMMs (small and base presets, batch 64 x 196 tokens), the nearest-prototype
//! search (a batch of 8 images' 784 patches against 16k and 100k-prototype banks), top-k
//! proposal masking, token entropy over |V| = 8192, the coupling layer (forward and backward),
//! attention backward, every glue op, the backbone's layers and its whole feature extraction,
//! and the whole ViT inference forward. One entry per kernel at least. Every timed call ends with a device synchronize, so a sample
//! is the wall time of the work, not of the launch.
//!
//! `cargo bench --features cuda --bench cuda_kernels [-- FILTER]`. Without a usable GPU it
//! prints why and measures nothing.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pmad::backend::CudaOps;
use pmad::backend::Precision::{Bf16, F32};
use pmad::cuda::attention::{AttentionDims, attention_fwd, attention_fwd_tc};
use pmad::cuda::coupling::{coupling_bwd, coupling_fwd};
use pmad::cuda::entropy::entropy_fwd;
use pmad::cuda::glue::{
    DwConv2dDims, Im2colDims, avg_pool, bias_act_nchw, bias_residual_add, dwconv2d, gather_rows,
    gaussian_blur, gelu_fwd, im2col, layernorm_fwd, mask_rows, nchw_to_rows, resize_bilinear,
};
use pmad::cuda::linear::{linear, pointwise_conv};
use pmad::cuda::proto_nn::{proto_nn, proto_nn_tc};
use pmad::cuda::topk_mask::topk_mask;
use pmad::cuda::{CudaDevice, CudaSlice};
use pmad::recon::vit::{Vit, VitConfig};
use pmad::recon::vit_infer::InferVit;
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
            // The device check must time the kernels, not report an empty run.
            assert!(
                !pmad::cuda::gpu_required(),
                "{} is set but there is no usable CUDA device: {e}",
                pmad::cuda::REQUIRE_GPU_VAR
            );
            println!("cuda_kernels: skipped ({e})");
            return;
        }
    };
    if dev.is_emulated() {
        // A `cuda-emu` build: the emulator checks logic, its timings mean nothing.
        println!("cuda_kernels: skipped (the emulated device is not timed)");
        return;
    }
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
        // The tensor-core forward (`--precision bf16`; compute capability 8.0+).
        if dev.compute_capability() >= (8, 0) {
            time(
                c,
                &dev,
                "attention",
                &format!("tc_bf16_b64_n196_h{heads}_d{head_dim}"),
                flops as u64,
                || {
                    attention_fwd_tc(&dev, &q, &k, &v, dims, None).expect("attention_tc");
                },
            );
        }
    }

    // Nearest prototype: FLOPs = 2 Q P D (f32 on CUDA cores, and the bf16 tensor-core search
    // with its f32 re-rank, `--precision bf16`).
    for (protos, dim) in [(16_384, 152), (100_000, 272)] {
        let nq = 8 * 784;
        let q = randn(&dev, nq * dim, &mut rng);
        let bank = randn(&dev, protos * dim, &mut rng);
        let flops = (2 * nq * protos * dim) as u64;
        time(
            c,
            &dev,
            "proto_nn",
            &format!("f32_{nq}x{protos}x{dim}"),
            flops,
            || {
                proto_nn(&dev, &q, &bank, nq, protos, dim).expect("proto_nn");
            },
        );
        time(
            c,
            &dev,
            "proto_nn",
            &format!("tc_bf16_{nq}x{protos}x{dim}"),
            flops,
            || {
                proto_nn_tc(&dev, &q, &bank, nq, protos, dim).expect("proto_nn_tc");
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
    let targets: Vec<u32> = (0..rows).map(|i| (i * 37 % 8192) as u32).collect();
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
    let (dy, dl) = (randn(&dev, cr * cc, &mut rng), randn(&dev, cr, &mut rng));
    time(
        c,
        &dev,
        "coupling",
        &format!("bwd_{cr}x{cc}"),
        (cr * cc) as u64,
        || {
            coupling_bwd(&dev, &x2, &s, &dy, &dl, cr, cc, 1.9).expect("coupling bwd");
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
            linear(&dev, F32, &x, &w, &bias, None, lr, lc, 3072).expect("linear");
        },
    );
    // --precision bf16: the operands rounded on the device, then the tensor-core GEMM.
    time(
        c,
        &dev,
        "glue",
        &format!("linear_bf16_{lr}x{lc}to3072"),
        (2 * lr * lc * 3072) as u64,
        || {
            linear(&dev, Bf16, &x, &w, &bias, None, lr, lc, 3072).expect("linear bf16");
        },
    );
    time(
        c,
        &dev,
        "glue",
        &format!("gelu_{lr}x{lc}"),
        (lr * lc) as u64,
        || {
            gelu_fwd(&dev, &x).expect("gelu");
        },
    );
    time(
        c,
        &dev,
        "glue",
        &format!("bias_residual_{lr}x{lc}"),
        (lr * lc) as u64,
        || {
            bias_residual_add(&dev, &x, &g, Some(&x), lr, lc).expect("bias_residual");
        },
    );
    let mask: Vec<u32> = (0..lr).map(|i| (i % 10 < 3) as u32).collect();
    let mask = dev.upload(&mask).expect("upload");
    time(
        c,
        &dev,
        "glue",
        &format!("mask_rows_{lr}x{lc}"),
        (lr * lc) as u64,
        || {
            mask_rows(&dev, &x, &mask, &g, lr, lc).expect("mask_rows");
        },
    );
    let idx: Vec<u32> = (0..lr as u32).filter(|i| i % 10 < 3).collect();
    let n_idx = idx.len();
    let idx = dev.upload(&idx).expect("upload");
    time(
        c,
        &dev,
        "glue",
        &format!("gather_rows_{n_idx}of{lr}x{lc}"),
        (n_idx * lc) as u64,
        || {
            gather_rows(&dev, &x, &idx, lr, lc).expect("gather_rows");
        },
    );
    // The backbone's layers at batch 64: the stem's im2col and GEMM, an expand 1x1 conv
    // (16 -> 96 at 112²), a depthwise 3x3 stride 2 (96 at 112² -> 56²), bias + ReLU6, the
    // PaDiM tap glue (resize 14² -> 28², 3x3 pool, NCHW -> rows).
    let stem_in = randn(&dev, 64 * 3 * 224 * 224, &mut rng);
    let d = Im2colDims {
        batch: 64,
        channels: 3,
        in_h: 224,
        in_w: 224,
        out_h: 112,
        out_w: 112,
        k_h: 3,
        k_w: 3,
        stride: 2,
        pad_top: 0,
        pad_left: 0,
    };
    time(
        c,
        &dev,
        "backbone",
        "im2col_stem_b64",
        d.col_numel() as u64,
        || {
            im2col(&dev, &stem_in, d).expect("im2col");
        },
    );
    let x16 = randn(&dev, 64 * 16 * 112 * 112, &mut rng);
    let w96 = randn(&dev, 96 * 16, &mut rng);
    let pw_flops = 2 * 64 * 16 * 96 * 112 * 112_u64;
    time(
        c,
        &dev,
        "backbone",
        "pointwise_16to96_112_b64",
        pw_flops,
        || {
            pointwise_conv(&dev, F32, &x16, &w96, 64, 16, 96, 112 * 112).expect("pointwise");
        },
    );
    let x96 = randn(&dev, 64 * 96 * 112 * 112, &mut rng);
    let (wdw, b96) = (randn(&dev, 96 * 9, &mut rng), randn(&dev, 96, &mut rng));
    let dd = DwConv2dDims {
        batch: 64,
        channels: 96,
        in_h: 112,
        in_w: 112,
        k_h: 3,
        k_w: 3,
        stride_h: 2,
        stride_w: 2,
        pad: (0, 1, 0, 1),
    };
    time(
        c,
        &dev,
        "backbone",
        "dwconv_k3s2_96_112_b64",
        (64 * 96 * 56 * 56 * 9 * 2) as u64,
        || {
            dwconv2d(&dev, &x96, &wdw, &b96, dd, true).expect("dwconv");
        },
    );
    time(
        c,
        &dev,
        "backbone",
        "bias_act_96_112_b64",
        (64 * 96 * 112 * 112) as u64,
        || {
            bias_act_nchw(&dev, &x96, &b96, None, 64, 96, 112 * 112, true).expect("bias_act");
        },
    );
    let tap = randn(&dev, 64 * 112 * 14 * 14, &mut rng);
    time(
        c,
        &dev,
        "backbone",
        "resize_112ch_14to28_b64",
        (64 * 112 * 28 * 28) as u64,
        || {
            resize_bilinear(&dev, &tap, 64 * 112, (14, 14), (28, 28)).expect("resize");
        },
    );
    let t28 = randn(&dev, 64 * 112 * 28 * 28, &mut rng);
    time(
        c,
        &dev,
        "backbone",
        "avg_pool3_112ch_28_b64",
        (64 * 112 * 28 * 28) as u64,
        || {
            avg_pool(&dev, &t28, 64 * 112, 28, 28, 3).expect("pool");
        },
    );
    let mut feat_rows = randn(&dev, 64 * 28 * 28 * 152, &mut rng);
    time(
        c,
        &dev,
        "backbone",
        "nchw_to_rows_112of152_28_b64",
        (64 * 112 * 28 * 28) as u64,
        || {
            nchw_to_rows(&dev, &t28, &mut feat_rows, 64, 112, 28 * 28, 152, 40).expect("rows");
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
            let batch = 64;
            let x: Vec<f32> = (0..batch * 3 * 224 * 224).map(|_| rng.normal()).collect();
            for (precision, name) in [(F32, "features_b64_224"), (Bf16, "features_bf16_b64_224")] {
                let gf = pmad::models::efficientnet_infer::InferFeatures::new(
                    pmad::backend::CudaOps::new(dev.clone(), precision),
                    &fx,
                )
                .expect("upload");
                time(c, &dev, "backbone", name, batch as u64, || {
                    gf.extract(&x, batch).expect("features");
                });
            }
        }
        Err(e) => {
            assert!(
                !pmad::cuda::gpu_required(),
                "{} is set but the backbone bench cannot run: {e}",
                pmad::cuda::REQUIRE_GPU_VAR
            );
            println!("backbone bench skipped: {e}");
        }
    }

    // The whole ViT inference forward (small and base presets, |V| 8192), 64 images, 30%
    // masked, entropy + cross-entropy; includes the host unfold and the upload.
    for (preset, precision) in [
        ("small", F32),
        ("base", F32),
        ("small", Bf16),
        ("base", Bf16),
    ] {
        let cfg = VitConfig::preset(preset, 8192).expect("preset");
        let vit = Vit::new(cfg.clone(), 1).expect("vit");
        let gv = InferVit::new(CudaOps::new(dev.clone(), precision), &vit).expect("upload vit");
        let preset = match precision {
            F32 => preset.to_string(),
            Bf16 => format!("{preset}_bf16"),
        };
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
