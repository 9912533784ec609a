//! Parity through the backend seam: every op of [`InferOps`], [`ConvOps`] and [`ScoreOps`] on
//! the CUDA backend (`CudaOps`)
//! against the same op on the CPU backend (`CpuOps`, the `src/ops` reference), on the same
//! seeded inputs of ragged shapes (sizes that are not multiples of a warp, a tile or a
//! vector). Pass: `|cuda - cpu| <= atol + rtol |cpu|` element-wise and NMSE below a bound.
//!
//! In CI this runs on the emulated device (`cargo test --features cuda-emu`); on a GPU
//! machine on the GPU. Without a device it skips, unless `PMAD_REQUIRE_GPU=1`.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use pmad::backend::{
    Conv, ConvOps, CpuOps, CudaOps, DeviceBank, InferOps, Linear, Norm, SCORE_STAGES, ScoreOps,
};
use pmad::cuda::{CudaDevice, CudaError};
use pmad::detector::scoring::{ImageScore, MapSpec};
use pmad::ops::attention::AttnShape;
use pmad::ops::conv::Activation;
use pmad::rng::Rng;

/// The device, or `None` (printing why) when there is none and none is required.
fn device() -> Option<Arc<CudaDevice>> {
    match CudaDevice::shared() {
        Ok(d) => Some(d),
        Err(CudaError::Unavailable(reason)) => {
            assert!(
                !pmad::cuda::gpu_required(),
                "PMAD_REQUIRE_GPU is set but there is no usable CUDA device: {reason}"
            );
            println!("skipped: no CUDA device ({reason})");
            None
        }
        Err(e) => panic!("opening the CUDA device failed: {e}"),
    }
}

/// Both backends' op sets on one device.
struct Pair {
    dev: Arc<CudaDevice>,
    gpu: CudaOps,
}

impl Pair {
    fn new() -> Option<Pair> {
        let dev = device()?;
        Some(Pair {
            gpu: CudaOps::new(dev.clone(), pmad::backend::Precision::F32),
            dev,
        })
    }
    fn down(&self, a: &<CudaOps as InferOps>::Act) -> Vec<f32> {
        self.dev.download(a).unwrap()
    }
}

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.range(-scale, scale)).collect()
}

/// A weight on each backend from the same host values.
fn weights<O: InferOps>(o: &O, v: &[f32]) -> O::Weight {
    let buf = Arc::new(v.to_vec());
    o.weight(&buf, 0..v.len()).unwrap()
}

/// Element-wise `|g - w| <= atol + rtol |w|` and NMSE `Σ(g-w)² / Σw² <= nmse`.
fn compare(name: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64, nmse: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let (mut num, mut den, mut worst, mut fails) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (g as f64, w as f64);
        assert!(
            g.is_finite() && w.is_finite(),
            "{name}: non-finite {g} vs {w}"
        );
        let err = (g - w).abs();
        if err > atol + rtol * w.abs() {
            fails += 1;
        }
        worst = worst.max(err);
        num += err * err;
        den += w * w;
    }
    let e = if den > 0.0 { num / den } else { num };
    println!("{name}: n={} max|err|={worst:.2e} nmse={e:.2e}", got.len());
    assert_eq!(
        fails, 0,
        "{name}: {fails} elements outside atol {atol} rtol {rtol}"
    );
    assert!(e <= nmse, "{name}: nmse {e:.2e} > {nmse:.0e}");
}

#[test]
fn linear_with_and_without_residual() {
    let Some(p) = Pair::new() else { return };
    for (i, &(rows, inp, out)) in [(1, 5, 3), (7, 13, 33), (65, 64, 97), (130, 100, 48)]
        .iter()
        .enumerate()
    {
        let seed = 10 + i as u64;
        let (x, w, b, r) = (
            values(rows * inp, seed, 1.0),
            values(out * inp, seed + 1, 0.5),
            values(out, seed + 2, 0.5),
            values(rows * out, seed + 3, 1.0),
        );
        for residual in [false, true] {
            let cpu = {
                let l = Linear {
                    w: weights(&CpuOps, &w),
                    b: weights(&CpuOps, &b),
                    inp,
                    out,
                };
                let res = CpuOps.input(r.clone()).unwrap();
                let x = CpuOps.input(x.clone()).unwrap();
                CpuOps
                    .linear(&x, &l, residual.then_some(&res), rows)
                    .unwrap()
            };
            let gpu = {
                let l = Linear {
                    w: weights(&p.gpu, &w),
                    b: weights(&p.gpu, &b),
                    inp,
                    out,
                };
                let res = p.gpu.input(r.clone()).unwrap();
                let x = p.gpu.input(x.clone()).unwrap();
                p.down(
                    &p.gpu
                        .linear(&x, &l, residual.then_some(&res), rows)
                        .unwrap(),
                )
            };
            let name = format!("linear {rows}x{inp}->{out} residual {residual}");
            compare(&name, &gpu, &cpu, 1e-4, 1e-4, 1e-10);
        }
    }
}

#[test]
fn layernorm_gelu_and_bias() {
    let Some(p) = Pair::new() else { return };
    for (i, &(rows, cols)) in [(1, 3), (7, 17), (33, 64), (130, 100)].iter().enumerate() {
        let seed = 20 + i as u64;
        let (x, g, b) = (
            values(rows * cols, seed, 3.0),
            values(cols, seed + 1, 1.5),
            values(cols, seed + 2, 0.5),
        );
        let cpu_n = Norm {
            gamma: weights(&CpuOps, &g),
            beta: weights(&CpuOps, &b),
        };
        let gpu_n = Norm {
            gamma: weights(&p.gpu, &g),
            beta: weights(&p.gpu, &b),
        };
        let xc = CpuOps.input(x.clone()).unwrap();
        let xg = p.gpu.input(x.clone()).unwrap();
        let ln_c = CpuOps.layernorm(&xc, &cpu_n, rows, cols, 1e-6).unwrap();
        let ln_g = p.gpu.layernorm(&xg, &gpu_n, rows, cols, 1e-6).unwrap();
        compare(
            &format!("layernorm {rows}x{cols}"),
            &p.down(&ln_g),
            &ln_c,
            1e-5,
            1e-5,
            1e-10,
        );

        let gelu_c = CpuOps.gelu(xc.clone()).unwrap();
        let gelu_g = p.gpu.gelu(p.gpu.input(x.clone()).unwrap()).unwrap();
        compare(
            &format!("gelu {rows}x{cols}"),
            &p.down(&gelu_g),
            &gelu_c,
            1e-6,
            1e-5,
            1e-10,
        );

        let bias_c = CpuOps.add_bias(xc, &cpu_n.beta, rows, cols).unwrap();
        let bias_g = p.gpu.add_bias(xg, &gpu_n.beta, rows, cols).unwrap();
        compare(
            &format!("add_bias {rows}x{cols}"),
            &p.down(&bias_g),
            &bias_c,
            0.0,
            0.0,
            0.0,
        );
    }
}

#[test]
fn mask_and_gather_rows_are_exact() {
    let Some(p) = Pair::new() else { return };
    for (i, &(rows, cols)) in [(1, 4), (9, 17), (197, 64)].iter().enumerate() {
        let seed = 30 + i as u64;
        let (x, token) = (values(rows * cols, seed, 1.0), values(cols, seed + 1, 1.0));
        let mut r = Rng::new(seed + 2);
        let mask: Vec<u32> = (0..rows)
            .map(|_| u32::from(r.range(0.0, 1.0) < 0.4))
            .collect();
        let masked_c = CpuOps
            .mask_rows(x.clone(), &mask, &weights(&CpuOps, &token), cols)
            .unwrap();
        let masked_g = p
            .gpu
            .mask_rows(
                p.gpu.input(x.clone()).unwrap(),
                &p.gpu.indices(mask.clone()).unwrap(),
                &weights(&p.gpu, &token),
                cols,
            )
            .unwrap();
        compare(
            &format!("mask_rows {rows}x{cols}"),
            &p.down(&masked_g),
            &masked_c,
            0.0,
            0.0,
            0.0,
        );
        // Rows in any order, repeated, first and last included.
        let idx: Vec<u32> = (0..rows as u32)
            .rev()
            .step_by(2)
            .chain([0, rows as u32 - 1, 0])
            .collect();
        let g_c = CpuOps.gather_rows(&masked_c, &idx, cols).unwrap();
        let g_g = p
            .gpu
            .gather_rows(&masked_g, &p.gpu.indices(idx.clone()).unwrap(), cols)
            .unwrap();
        compare(
            &format!("gather_rows {rows}x{cols}"),
            &p.down(&g_g),
            &g_c,
            0.0,
            0.0,
            0.0,
        );
    }
}

#[test]
fn attention_at_ragged_shapes() {
    let Some(p) = Pair::new() else { return };
    let shapes = [
        (1, 1, 1, 8),
        (2, 7, 3, 16),
        (1, 50, 2, 40),
        (3, 65, 1, 64),
        (1, 197, 2, 64),
        (1, 33, 1, 128),
    ];
    for (i, &(batch, tokens, heads, head_dim)) in shapes.iter().enumerate() {
        let n = batch * tokens * heads * head_dim;
        let seed = 40 + i as u64;
        let (q, k, v) = (
            values(n, seed, 2.0),
            values(n, seed + 1, 2.0),
            values(n, seed + 2, 1.0),
        );
        let s = AttnShape {
            batch,
            tokens,
            heads,
            head_dim,
        };
        let c = CpuOps.attention(&q, &k, &v, s).unwrap();
        let up = |h: &Vec<f32>| p.gpu.input(h.clone()).unwrap();
        let g = p.gpu.attention(&up(&q), &up(&k), &up(&v), s).unwrap();
        let name = format!("attention b{batch} n{tokens} h{heads} d{head_dim}");
        compare(&name, &p.down(&g), &c, 1e-5, 1e-4, 1e-10);
    }
}

#[test]
fn entropy_and_cross_entropy_rows() {
    let Some(p) = Pair::new() else { return };
    for (i, &(rows, vocab)) in [(1, 2), (5, 33), (40, 1000), (3, 8192)].iter().enumerate() {
        let seed = 50 + i as u64;
        // Wide logits: some rows nearly one-hot, so the entropy spans its range.
        let logits = values(rows * vocab, seed, 8.0);
        let mut r = Rng::new(seed + 1);
        let targets: Vec<u32> = (0..rows)
            .map(|_| (r.range(0.0, 1.0) * vocab as f32) as u32 % vocab as u32)
            .collect();
        let lg = p.gpu.input(logits.clone()).unwrap();
        // NMSE 1e-6 here: a near one-hot row has a cross-entropy near 0, where a 1e-7 absolute
        // difference is a large relative one; the element-wise bound is the real check.
        let tg = p.gpu.indices(targets.clone()).unwrap();
        for with_targets in [false, true] {
            let t = with_targets.then_some(&targets);
            let (e_c, ce_c) = CpuOps.entropy(&logits, rows, vocab, t).unwrap();
            let (e_g, ce_g) = p
                .gpu
                .entropy(&lg, rows, vocab, with_targets.then_some(&tg))
                .unwrap();
            let (e_g, ce_g) = (p.down(&e_g), ce_g.map(|c| p.down(&c)));
            compare(
                &format!("entropy {rows}x{vocab}"),
                &e_g,
                &e_c,
                1e-5,
                1e-5,
                1e-6,
            );
            assert_eq!(ce_c.is_some(), with_targets);
            assert_eq!(ce_g.is_some(), with_targets);
            if let (Some(a), Some(b)) = (ce_g, ce_c) {
                compare(
                    &format!("cross-entropy {rows}x{vocab}"),
                    &a,
                    &b,
                    1e-5,
                    1e-5,
                    1e-6,
                );
            }
        }
    }
}

/// A conv's weights on backend `o` (shape `[c_out, c_in / groups, k, k]`).
fn conv<O: InferOps>(o: &O, w: &[f32], b: Option<&[f32]>, shape: ConvShape) -> Conv<O::Weight> {
    let (c_in, c_out, kernel, stride, groups, act) = shape;
    Conv {
        weight: weights(o, w),
        bias: b.map(|b| weights(o, b)),
        c_in,
        c_out,
        kernel,
        stride,
        groups,
        act,
    }
}

/// (c_in, c_out, kernel, stride, groups, activation).
type ConvShape = (usize, usize, usize, usize, usize, Activation);

#[test]
fn conv2d_dense_pointwise_and_depthwise() {
    let Some(p) = Pair::new() else { return };
    use Activation::{None as Linear_, Relu6};
    // (shape, batch, (h, w), with a residual): the stem (3x3 stride 2), pointwise expand and
    // project (the project with the MBConv skip), depthwise 3x3 / 5x5 at strides 1 and 2,
    // on odd, non-square maps.
    let cases: [(ConvShape, usize, (usize, usize), bool); 7] = [
        ((3, 8, 3, 2, 1, Relu6), 2, (17, 13), false),
        ((5, 12, 1, 1, 1, Relu6), 1, (9, 7), false),
        ((12, 5, 1, 1, 1, Linear_), 3, (9, 7), true),
        ((7, 7, 3, 1, 7, Relu6), 2, (11, 6), false),
        ((7, 7, 3, 2, 7, Relu6), 1, (11, 6), false),
        ((6, 6, 5, 1, 6, Relu6), 1, (14, 14), false),
        ((6, 6, 5, 2, 6, Linear_), 2, (15, 9), false),
    ];
    for (i, &(shape, batch, (h, w), residual)) in cases.iter().enumerate() {
        let (c_in, c_out, k, stride, groups, _) = shape;
        let seed = 60 + i as u64;
        let x = values(batch * c_in * h * w, seed, 3.0);
        let wt = values(c_out * (c_in / groups) * k * k, seed + 1, 0.5);
        let b = values(c_out, seed + 2, 0.5);
        let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
        let r = values(batch * c_out * oh * ow, seed + 3, 1.0);
        let cpu = {
            let c = conv(&CpuOps, &wt, Some(&b), shape);
            let res = residual.then(|| CpuOps.input(r.clone()).unwrap());
            let x = CpuOps.input(x.clone()).unwrap();
            CpuOps.conv2d(&x, &c, batch, (h, w), res.as_ref()).unwrap()
        };
        let gpu = {
            let c = conv(&p.gpu, &wt, Some(&b), shape);
            let res = residual.then(|| p.gpu.input(r.clone()).unwrap());
            let x = p.gpu.input(x.clone()).unwrap();
            p.down(&p.gpu.conv2d(&x, &c, batch, (h, w), res.as_ref()).unwrap())
        };
        let name = format!("conv2d {shape:?} b{batch} {h}x{w} residual {residual}");
        compare(&name, &gpu, &cpu, 1e-4, 1e-4, 1e-10);
        assert_eq!(cpu.len(), batch * c_out * oh * ow, "{name}");
    }
}

#[test]
fn resample_and_rows() {
    let Some(p) = Pair::new() else { return };
    // (planes, from, to, pool): a resize up and down, pooling alone, both, and nothing to do.
    let cases = [
        (5, (7, 7), (14, 14), 1),
        (3, (28, 28), (14, 14), 3),
        (4, (9, 9), (9, 9), 3),
        (2, (6, 10), (12, 12), 5),
        (2, (8, 8), (8, 8), 1),
    ];
    for (i, &(planes, from, to, pool)) in cases.iter().enumerate() {
        let x = values(planes * from.0 * from.1, 70 + i as u64, 2.0);
        let c = CpuOps.resample(&x, planes, from, to, pool).unwrap();
        let g = p
            .gpu
            .resample(&p.gpu.input(x.clone()).unwrap(), planes, from, to, pool)
            .unwrap();
        assert_eq!(
            c.is_some(),
            g.is_some(),
            "resample {from:?}->{to:?} pool {pool}"
        );
        let (Some(c), Some(g)) = (c, g) else { continue };
        let name = format!("resample {planes} {from:?}->{to:?} pool {pool}");
        compare(&name, &p.down(&g), &c, 1e-5, 1e-5, 1e-10);
    }
    // Two taps of 3 and 5 channels scattered into 9-wide rows (one spare column).
    let (batch, plane, width) = (2, 6, 9);
    let mut rows_c = CpuOps.zeros(batch * plane * width).unwrap();
    let mut rows_g = p.gpu.zeros(batch * plane * width).unwrap();
    for (seed, channels, offset) in [(80u64, 3, 0), (81, 5, 3)] {
        let x = values(batch * channels * plane, seed, 1.0);
        CpuOps
            .nchw_to_rows(&x, &mut rows_c, batch, channels, plane, width, offset)
            .unwrap();
        let xg = p.gpu.input(x).unwrap();
        p.gpu
            .nchw_to_rows(&xg, &mut rows_g, batch, channels, plane, width, offset)
            .unwrap();
    }
    compare("nchw_to_rows", &p.down(&rows_g), &rows_c, 0.0, 0.0, 0.0);
    assert!(rows_c.iter().skip(8).step_by(9).all(|&v| v == 0.0));
}

/// The scoring chain's ops ([`ScoreOps`]) that need no class bank: the search itself is
/// `proto_nn` (tests/cuda_parity.rs) and the whole chain runs in tests/cuda_e2e.rs.
#[test]
fn score_chain_ops() {
    let Some(p) = Pair::new() else { return };
    let up = |h: &Vec<f32>| p.gpu.input(h.clone()).unwrap();
    let flags = |i: &<CudaOps as InferOps>::Idx| -> Vec<u32> { p.dev.download(i).unwrap() };
    // Proposal masks on ragged grids, with ties (quantised scores, signed zeros) and one
    // all-equal image.
    for (i, &(images, grid, vgrid, ratio)) in [
        (1, 28, 14, 0.3f32),
        (3, 14, 14, 0.5),
        (2, 30, 14, 0.01),
        (5, 42, 14, 1.0),
    ]
    .iter()
    .enumerate()
    {
        let mut a: Vec<f32> = values(images * grid * grid, 90 + i as u64, 4.0)
            .iter()
            .map(|v| (v * 2.0).round().abs())
            .collect();
        a[..grid * grid].iter_mut().for_each(|v| *v = 1.0);
        // Signed zeros tie with the +0.0 scores (the CPU's sort must not order them).
        a.iter_mut()
            .skip(grid * grid + 5)
            .step_by(13)
            .for_each(|v| *v = -0.0);
        let (mc, kc) = CpuOps
            .proposal_mask(&a, images, grid, vgrid, ratio)
            .unwrap();
        let (mg, kg) = p
            .gpu
            .proposal_mask(&up(&a), images, grid, vgrid, ratio)
            .unwrap();
        assert_eq!(kc, kg, "proposal k");
        assert_eq!(
            flags(&mg),
            mc,
            "proposal mask {images}x{grid}->{vgrid} r{ratio}"
        );
        let n = vgrid * vgrid;
        let rc = CpuOps.masked_rows(&mc, images, n, kc).unwrap();
        let rg = p.gpu.masked_rows(&mg, images, n, kg).unwrap();
        assert_eq!(flags(&rg), rc, "masked rows");
        // Masked-row values scattered back over every patch.
        let v = values(rc.len(), 95 + i as u64, 1.0);
        let sc = CpuOps.scatter_rows(&v, &rc, images * n).unwrap();
        let sg = p.gpu.scatter_rows(&up(&v), &rg, images * n).unwrap();
        compare("scatter_rows", &p.down(&sg), &sc, 0.0, 0.0, 0.0);
        // Up to the feature grid, with and without the abnormality.
        for with_a in [false, true] {
            let pc = CpuOps
                .upsample_product(&sc, with_a.then_some(&a), images, vgrid, grid)
                .unwrap();
            let ag = up(&a);
            let pg = p
                .gpu
                .upsample_product(&sg, with_a.then_some(&ag), images, vgrid, grid)
                .unwrap();
            compare("upsample_product", &p.down(&pg), &pc, 0.0, 0.0, 0.0);
        }
    }
    // Pooling feature rows to the ViT grid (summed in the CPU's order: exact).
    for (i, &(images, grid, dim)) in [(1, 14, 3), (2, 28, 17), (1, 42, 33)].iter().enumerate() {
        let f = values(images * grid * grid * dim, 100 + i as u64, 2.0);
        let c = CpuOps.pool_cells(&f, images, grid, 14, dim).unwrap();
        let g = p.gpu.pool_cells(&up(&f), images, grid, 14, dim).unwrap();
        compare(
            &format!("pool_cells {images}x{grid}x{dim}"),
            &p.down(&g),
            &c,
            0.0,
            0.0,
            0.0,
        );
    }
    // Maps: resize + blur (taps in f64 on the GPU, f32 on the CPU) and the image score.
    for (i, &(images, grid, size, sigma)) in [
        (1, 28, 256, 4.0f32),
        (3, 14, 64, 4.0),
        (2, 30, 97, 2.5),
        (1, 7, 33, 0.0),
    ]
    .iter()
    .enumerate()
    {
        let patches: Vec<f32> = values(images * grid * grid, 110 + i as u64, 3.0)
            .iter()
            .map(|v| v.abs())
            .collect();
        let spec = MapSpec {
            size,
            sigma_at_256: sigma,
            ..MapSpec::default()
        };
        let mc = CpuOps.maps(&patches, images, grid, &spec).unwrap();
        let mg = p.gpu.maps(&up(&patches), images, grid, &spec).unwrap();
        let name = format!("maps {images}x{grid}->{size} s{sigma}");
        compare(&name, &p.down(&mg), &mc, 1e-5, 1e-5, 1e-10);
        let side = size * size;
        for score in [
            ImageScore::Max,
            ImageScore::TopMean { q: 0.01 },
            ImageScore::TopMean { q: 0.37 },
            ImageScore::TopMean { q: 1.0 },
        ] {
            // On the same map values, so that the selection alone is compared.
            let sc = CpuOps.image_scores(&mc, images, side, score).unwrap();
            let sg = p.gpu.image_scores(&up(&mc), images, side, score).unwrap();
            compare(
                &format!("image score {score:?} {name}"),
                &p.down(&sg),
                &sc,
                1e-6,
                1e-6,
                1e-12,
            );
        }
    }
    // Ties and negative values in the top-k selection.
    let tied = vec![2.0, -1.0, 2.0, 2.0, -3.0, 0.5, 2.0, -0.0];
    for q in [0.125, 0.25, 0.5, 0.75, 1.0] {
        let s = ImageScore::TopMean { q };
        let c = CpuOps.image_scores(&tied, 1, 8, s).unwrap();
        let g = p.gpu.image_scores(&up(&tied), 1, 8, s).unwrap();
        compare(
            &format!("image score ties q{q}"),
            &p.down(&g),
            &c,
            0.0,
            0.0,
            0.0,
        );
    }
    // Codebook assignment = the nearest code of each row.
    let (n, k, dim) = (37, 11, 19);
    let (rows, codes) = (values(n * dim, 120, 1.0), values(k * dim, 121, 1.0));
    let bank = DeviceBank::default();
    let c = CpuOps.assign(&codes, &bank, &rows, n, dim).unwrap();
    let g = p.gpu.assign(&codes, &bank, &up(&rows), n, dim).unwrap();
    assert_eq!(flags(&g), c, "assign");
    // Non-finite values land in their image's slot, finite images stay 0.
    let slots = SCORE_STAGES.len();
    let mut x = values(4 * 10, 130, 1.0);
    x[13] = f32::NAN;
    x[39] = f32::NEG_INFINITY;
    let mut fc = CpuOps.nonfinite_flags(4).unwrap();
    let mut fg = p.gpu.nonfinite_flags(4).unwrap();
    CpuOps.record_nonfinite(&x, 10, &mut fc, 2).unwrap();
    p.gpu.record_nonfinite(&up(&x), 10, &mut fg, 2).unwrap();
    let fg = p.down(&fg);
    for (name, f) in [("cpu", &fc), ("gpu", &fg)] {
        let set: Vec<usize> = (0..f.len()).filter(|&i| f[i] != 0.0).collect();
        assert_eq!(set, vec![slots + 2, 3 * slots + 2], "{name} flags");
        assert!(f[slots + 2].is_nan() && f[3 * slots + 2] == f32::NEG_INFINITY);
    }
}
