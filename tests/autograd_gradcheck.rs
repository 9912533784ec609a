//! Finite-difference checks of every differentiable op of `pmad::autograd`, one test each, on
//! small ragged shapes; then a coupling flow and a whole ViT block end to end.
//!
//! Non-scalar outputs are reduced with `probe_loss` (`Σ out ⊙ c`, `c` random) so no symmetry
//! hides a wrong gradient. Tolerances `|analytic - numeric| <= atol + rtol·|numeric|` are the
//! checker's default (`h = 1e-3`, `atol = 1e-3`, `rtol = 1e-2`) unless a test states others.

mod autograd_util;

use autograd_util::*;
use pmad::Result;
use pmad::autograd::gradcheck::{Tolerance, gradcheck, probe_loss};
use pmad::autograd::{Grads, ParamStore, Tape, Var};
use pmad::rng::Rng;
use pmad::tensor::Tensor;

/// Runs the checker on `inputs` and panics with the worst element on failure.
fn check<F>(inputs: &[Tensor], tol: Tolerance, build: F)
where
    F: Fn(&Tape, &[Var]) -> Result<Var>,
{
    let report = gradcheck(inputs, tol, build).unwrap();
    assert!(report.checked > 0);
    println!("{report}");
    report.assert_ok();
}

/// Inputs of the given shapes, uniform in [-1, 1), from `seed`.
fn inputs(shapes: &[&[usize]], seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    shapes
        .iter()
        .map(|s| rand_tensor(s, 1.0, &mut rng))
        .collect()
}

/// Checks a one-input element-wise op through `probe_loss`.
fn check_unary(x: Tensor, tol: Tolerance, op: impl Fn(&Tape, Var) -> Var) {
    check(&[x], tol, |t, v| probe_loss(t, op(t, v[0]), 9));
}

#[test]
fn add_same_shape() {
    check(
        &inputs(&[&[5, 7], &[5, 7]], 1),
        Tolerance::default(),
        |t, v| probe_loss(t, t.add(v[0], v[1])?, 2),
    );
}

#[test]
fn add_broadcasts_bias_rows() {
    check(
        &inputs(&[&[5, 7], &[7]], 2),
        Tolerance::default(),
        |t, v| probe_loss(t, t.add(v[0], v[1])?, 3),
    );
}

#[test]
fn add_broadcasts_position_embedding_over_batch() {
    check(
        &inputs(&[&[2, 5, 7], &[5, 7]], 3),
        Tolerance::default(),
        |t, v| probe_loss(t, t.add(v[0], v[1])?, 4),
    );
}

#[test]
fn sub_broadcast_and_same_input_twice() {
    check(
        &inputs(&[&[5, 7], &[7]], 4),
        Tolerance::default(),
        |t, v| {
            let d = t.sub(v[0], v[1])?;
            let dd = t.sub(d, d)?; // identically zero: both uses must cancel exactly
            probe_loss(t, t.add(d, dd)?, 5)
        },
    );
}

#[test]
fn mul_same_shape_and_broadcast() {
    check(
        &inputs(&[&[5, 7], &[5, 7], &[7]], 5),
        Tolerance::default(),
        |t, v| {
            let p = t.mul(v[0], v[1])?;
            probe_loss(t, t.mul(p, v[2])?, 6)
        },
    );
}

#[test]
fn mul_input_by_itself() {
    check(&inputs(&[&[5, 7]], 6), Tolerance::default(), |t, v| {
        probe_loss(t, t.mul(v[0], v[0])?, 7)
    });
}

#[test]
fn scale_and_add_scalar() {
    check(&inputs(&[&[5, 7]], 7), Tolerance::default(), |t, v| {
        probe_loss(t, t.add_scalar(t.scale(v[0], -2.5), 0.75), 8)
    });
}

#[test]
fn matmul_2d_and_batched_rows() {
    check(
        &inputs(&[&[5, 4], &[4, 6]], 8),
        Tolerance::default(),
        |t, v| probe_loss(t, t.matmul(v[0], v[1])?, 9),
    );
    check(
        &inputs(&[&[2, 5, 3], &[3, 7]], 9),
        Tolerance::default(),
        |t, v| probe_loss(t, t.matmul(v[0], v[1])?, 10),
    );
}

#[test]
fn linear_with_and_without_bias() {
    check(
        &inputs(&[&[2, 5, 7], &[4, 7], &[4]], 10),
        Tolerance::default(),
        |t, v| probe_loss(t, t.linear(v[0], v[1], Some(v[2]))?, 11),
    );
    check(
        &inputs(&[&[5, 7], &[3, 7]], 11),
        Tolerance::default(),
        |t, v| probe_loss(t, t.linear(v[0], v[1], None)?, 12),
    );
}

#[test]
fn layernorm_over_last_dim() {
    let mut x = inputs(&[&[5, 7], &[7], &[7]], 12);
    // Rows with an offset and a spread other than 1, to exercise mean and rstd.
    let shifted: Vec<f32> = x[0].f32s().iter().map(|v| 3.0 * v + 0.5).collect();
    x[0] = Tensor::new(shifted, &[5, 7]).unwrap();
    check(&x, Tolerance::default(), |t, v| {
        probe_loss(t, t.layernorm(v[0], v[1], v[2], 1e-5)?, 13)
    });
}

#[test]
fn gelu() {
    let x = rand_tensor(&[5, 7], 3.0, &mut Rng::new(13));
    check_unary(x, Tolerance::default(), |t, x| t.gelu(x));
}

#[test]
fn tanh() {
    let x = rand_tensor(&[5, 7], 2.0, &mut Rng::new(14));
    check_unary(x, Tolerance::default(), |t, x| t.tanh(x));
}

#[test]
fn relu_away_from_the_kink() {
    // Values with |x| >= 0.1 so the finite difference never straddles 0.
    let v: Vec<f32> = rand_tensor(&[5, 7], 1.0, &mut Rng::new(15))
        .f32s()
        .iter()
        .map(|&x| {
            if x.abs() < 0.1 {
                x + 0.2f32.copysign(x)
            } else {
                x
            }
        })
        .collect();
    check_unary(
        Tensor::new(v, &[5, 7]).unwrap(),
        Tolerance::default(),
        |t, x| t.relu(x),
    );
}

#[test]
fn exp() {
    let x = rand_tensor(&[5, 7], 2.0, &mut Rng::new(16));
    check_unary(x, Tolerance::default(), |t, x| t.exp(x));
}

#[test]
fn square() {
    let x = rand_tensor(&[5, 7], 2.0, &mut Rng::new(17));
    check_unary(x, Tolerance::default(), |t, x| t.square(x));
}

#[test]
fn soft_clamp_inside_and_in_saturation() {
    let x = rand_tensor(&[5, 7], 8.0, &mut Rng::new(18)); // reaches well past alpha = 1.9
    check_unary(x, Tolerance::default(), |t, x| t.soft_clamp(x, CLAMP_ALPHA));
}

#[test]
fn sum_mean_sumsq_to_scalars() {
    let x = inputs(&[&[5, 7]], 19);
    check(&x, Tolerance::default(), |t, v| Ok(t.sum(v[0])));
    check(&x, Tolerance::default(), |t, v| Ok(t.mean(v[0])));
    check(&x, Tolerance::default(), |t, v| Ok(t.sumsq(v[0])));
}

#[test]
fn sum_rows_per_row() {
    check(&inputs(&[&[2, 5, 7]], 20), Tolerance::default(), |t, v| {
        let s = t.sum_rows(v[0]);
        assert_eq!(t.shape(s), vec![2, 5]);
        probe_loss(t, s, 21)
    });
}

#[test]
fn reshape_keeps_gradients_in_place() {
    check(&inputs(&[&[2, 5, 7]], 21), Tolerance::default(), |t, v| {
        let r = t.reshape(v[0], &[10, 7])?;
        probe_loss(
            t,
            t.linear(r, t.constant(vec![0.5; 7 * 3], &[3, 7])?, None)?,
            22,
        )
    });
}

#[test]
fn slice_and_concat_cols() {
    check(
        &inputs(&[&[5, 7], &[5, 2]], 22),
        Tolerance::default(),
        |t, v| {
            let a = t.slice_cols(v[0], 1, 4)?;
            let b = t.slice_cols(v[0], 4, 7)?;
            let c = t.concat_cols(&[b, v[1], a, b])?; // `b` used twice
            assert_eq!(t.shape(c), vec![5, 11]);
            probe_loss(t, c, 23)
        },
    );
}

/// `[B, N, H*D]` with B = 2, N = 5 tokens, H = 2 heads of dim 3.
const ATTN: [usize; 3] = [2, 5, 6];

#[test]
fn attention_separate_q_k_v() {
    let mut x = inputs(&[&ATTN, &ATTN, &ATTN], 23);
    // Larger queries give peaky softmaxes.
    x[0] = Tensor::new(x[0].f32s().iter().map(|v| 2.5 * v).collect(), &ATTN).unwrap();
    check(&x, Tolerance::default(), |t, v| {
        probe_loss(t, t.attention(v[0], v[1], v[2], 2)?, 24)
    });
}

#[test]
fn attention_from_fused_qkv_split() {
    let x = inputs(&[&[2, 5, 18]], 24);
    check(&x, Tolerance::default(), |t, v| {
        let (q, k, vv) = t.split_qkv(v[0])?;
        probe_loss(t, t.attention(q, k, vv, 2)?, 25)
    });
}

#[test]
fn attention_with_one_input_as_q_k_and_v() {
    check(&inputs(&[&ATTN], 25), Tolerance::default(), |t, v| {
        probe_loss(t, t.attention(v[0], v[0], v[0], 3)?, 26)
    });
}

#[test]
fn gather_rows_and_embedding_with_repeats() {
    check(&inputs(&[&[2, 3, 4]], 26), Tolerance::default(), |t, v| {
        probe_loss(t, t.gather_rows(v[0], &[5, 0, 5, 2, 5])?, 27)
    });
    check(&inputs(&[&[7, 4]], 27), Tolerance::default(), |t, v| {
        probe_loss(t, t.embedding(v[0], &[3, 3, 6, 0])?, 28)
    });
}

#[test]
fn mask_token_select() {
    let mask = [
        true, false, false, true, false, true, true, false, false, true,
    ];
    check(
        &inputs(&[&[2, 5, 7], &[7]], 28),
        Tolerance::default(),
        |t, v| probe_loss(t, t.mask_token_select(v[0], v[1], &mask)?, 29),
    );
}

#[test]
fn cross_entropy_over_a_subset_of_rows() {
    let targets = [3, 0, 4, 4, 1, 2, 0];
    let x = rand_tensor(&[7, 5], 3.0, &mut Rng::new(29));
    check(&[x], Tolerance::default(), |t, v| {
        t.cross_entropy_rows(v[0], &targets, &[1, 3, 4, 6])
    });
}

#[test]
fn cross_entropy_ignores_unselected_rows() {
    let t = Tape::new();
    let x = t.variable(vec![0.3; 12], &[3, 4]).unwrap();
    let loss = t.cross_entropy_rows(x, &[0, 1, 2], &[1]).unwrap();
    assert!((t.scalar(loss) - 4f32.ln()).abs() < 1e-6);
    let g = t.backward(loss).unwrap();
    let g = g.get(x).unwrap();
    assert!(g[..4].iter().chain(&g[8..]).all(|&v| v == 0.0));
    assert!((g[5] - (0.25 - 1.0)).abs() < 1e-6 && (g[4] - 0.25).abs() < 1e-6);
}

/// Inputs of a 2-layer conditional coupling flow on 4 features with 3 conditioning values:
/// `x`, `cond`, then the 8 subnet weights.
fn flow_inputs(seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    let mut shapes = coupling_shapes("c0", 4, 3, 6);
    shapes.extend(coupling_shapes("c1", 4, 3, 6));
    let mut v = vec![
        rand_tensor(&[5, 4], 1.5, &mut rng),
        rand_tensor(&[5, 3], 1.0, &mut rng),
    ];
    // Weights large enough that some clamp inputs leave the linear range.
    v.extend(
        init_tensors(&shapes, 0.5, &mut rng)
            .into_iter()
            .map(|w| Tensor::new(w.f32s().iter().map(|x| 2.0 * x).collect(), w.shape()).unwrap()),
    );
    v
}

#[test]
fn coupling_layer_logdet() {
    check(&flow_inputs(30), Tolerance::default(), |t, v| {
        let (_, logdet) = coupling(t, &v[2..6], v[0], v[1], false)?;
        probe_loss(t, logdet, 31)
    });
}

#[test]
fn coupling_layer_output() {
    // A composite of 12 ops with outputs up to ~e^1.9: h = 3e-3 as in the flow test below.
    check(
        &flow_inputs(31),
        Tolerance::new(3e-3, 1e-3, 1e-2),
        |t, v| {
            let (y, _) = coupling(t, &v[6..10], v[0], v[1], true)?;
            probe_loss(t, y, 32)
        },
    );
}

#[test]
fn coupling_flow_negative_log_likelihood() {
    // The NLL is ~13 here, so f32 rounding of the loss (~1e-6) divided by 2h dominates the
    // difference at h = 1e-3; h = 3e-3 cuts that noise to ~2e-4 (curvature error stays lower).
    let tol = Tolerance::new(3e-3, 1e-3, 1e-2);
    check(&flow_inputs(32), tol, |t, v| {
        flow_nll(t, &v[2..], v[0], v[1])
    });
}

#[test]
fn vit_block_alone() {
    let (d, hidden) = (6, 10);
    let mut rng = Rng::new(33);
    let mut x = vec![rand_tensor(&[2, 5, d], 1.0, &mut rng)];
    x.extend(init_tensors(&block_shapes("b", d, hidden), 0.3, &mut rng));
    // Composite f32 forward: rounding noise ~1e-6 of the loss over 2h dominates at h = 1e-3
    // (measured: the worst difference scales as 1/h), so h = 3e-3 (see the flow test).
    check(&x, Tolerance::new(3e-3, 1e-3, 1e-2), |t, v| {
        probe_loss(t, vit_block(t, &v[1..], v[0], 2)?, 34)
    });
}

#[test]
fn vit_masked_token_model_end_to_end() {
    let c = MtmConfig {
        vocab: 7,
        tokens: 5,
        width: 6,
        hidden: 10,
        heads: 2,
    };
    let mut rng = Rng::new(34);
    let ids: Vec<usize> = (0..2 * c.tokens).map(|_| rng.below(c.vocab)).collect();
    let mask = [
        true, false, false, true, false, false, true, true, false, false,
    ];
    let mut w = init_tensors(&mtm_shapes(c), 0.3, &mut rng);
    // Embeddings of a realistic (not Xavier) size.
    for i in [0, 2] {
        w[i] = rand_tensor(w[i].shape(), 1.0, &mut rng);
    }
    check(&w, Tolerance::new(3e-3, 1e-3, 1e-2), |t, v| {
        mtm_loss(t, v, c, &ids, &mask)
    });
}

// ---------------------------------------------------------------- the tape and the checker

#[test]
fn checker_catches_a_wrong_gradient() {
    // A custom op y = x² whose backward claims dy/dx = x (half the truth).
    let wrong_square = |t: &Tape, x: Var| {
        let xv = t.value(x);
        let y = xv.iter().map(|v| v * v).collect();
        t.push(y, t.shape(x), &[x], move |dy: &[f32], g: &mut Grads| {
            let d: Vec<f32> = dy.iter().zip(xv.iter()).map(|(d, x)| d * x).collect();
            g.add(x, &d);
        })
    };
    let x = inputs(&[&[3, 4]], 35);
    let report = gradcheck(&x, Tolerance::default(), |t, v| {
        probe_loss(t, wrong_square(t, v[0]), 36)
    })
    .unwrap();
    assert!(!report.passed(), "{report}");
    assert_eq!(report.checked, 12);
    assert!((report.worst.numeric - 2.0 * report.worst.analytic).abs() < 1e-2);
}

#[test]
fn parameters_bind_once_and_accumulate() {
    let mut store = ParamStore::new();
    let id = store.add("w", vec![1.0, -2.0, 3.0], &[3]).unwrap();
    store.add("unused", vec![0.0; 2], &[2]).unwrap();
    let t = Tape::new();
    let w = t.param(&store, "w").unwrap();
    assert_eq!(t.param_id(&store, id), w);
    assert!(t.param(&store, "nope").is_err());
    let w2 = t.param(&store, "w").unwrap();
    let loss = t.sum(t.mul(w, w2).unwrap()); // Σ w², d/dw = 2w
    let grads = t.backward(loss).unwrap().into_params();
    assert_eq!(grads.by_name(&store, "w").unwrap(), &[2.0, -4.0, 6.0]);
    assert!(grads.by_name(&store, "unused").is_none());
}

#[test]
fn no_grad_tape_computes_the_same_values_without_gradients() {
    let mut store = ParamStore::new();
    store.add("w", vec![0.5, -1.0, 2.0, 0.25], &[2, 2]).unwrap();
    let forward = |t: &Tape| {
        let x = t.constant(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let y = t.gelu(t.matmul(x, t.param(&store, "w").unwrap()).unwrap());
        (t.to_vec(y), t.requires_grad(y))
    };
    let (with_grad, without) = (forward(&Tape::new()), forward(&Tape::no_grad()));
    assert_eq!(with_grad.0, without.0);
    assert!(with_grad.1 && !without.1);
}

#[test]
fn backward_rejects_bad_losses() {
    let t = Tape::new();
    let x = t.variable(vec![1.0, 2.0], &[2]).unwrap();
    assert!(t.backward(x).is_err(), "not a scalar");
    let t = Tape::new();
    let c = t.constant(vec![1.0, 2.0], &[2]).unwrap();
    let s = t.sum(c);
    assert!(!t.requires_grad(s));
    assert!(t.backward(s).is_err(), "depends on nothing trainable");
}

#[test]
fn shape_errors_are_reported() {
    let t = Tape::new();
    let a = t.variable(vec![0.0; 6], &[2, 3]).unwrap();
    let b = t.variable(vec![0.0; 2], &[2]).unwrap();
    assert!(t.add(a, b).is_err());
    assert!(t.matmul(a, a).is_err());
    assert!(t.linear(a, b, None).is_err());
    assert!(t.slice_cols(a, 2, 4).is_err());
    assert!(t.reshape(a, &[4]).is_err());
    assert!(t.attention(a, a, a, 1).is_err());
    assert!(t.cross_entropy_rows(a, &[0, 5], &[1]).is_err());
    assert!(t.mask_token_select(a, b, &[true, false]).is_err());
    assert!(t.gather_rows(a, &[2]).is_err());
    assert!(t.constant(vec![0.0; 5], &[2, 3]).is_err());
}
