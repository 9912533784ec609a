//! End-to-end training with `pmad::autograd`: each test fits a tiny model on a seeded toy
//! problem with AdamW, the cosine schedule and gradient clipping, and asserts that it learned
//! (loss or likelihood measured on held-out data before and after training).

mod autograd_util;

use autograd_util::*;
use pmad::autograd::{AdamW, ParamStore, Tape, Var, clip_grad_norm, cosine_lr};
use pmad::rng::Rng;
use std::f32::consts::PI;

/// One optimisation step: gradients of `loss` (on a consumed tape), clipping, AdamW.
fn step(t: Tape, loss: Var, store: &mut ParamStore, opt: &mut AdamW, lr: f32, clip: f32) -> f32 {
    let value = t.scalar(loss);
    let mut grads = t.backward(loss).unwrap().into_params();
    clip_grad_norm(&mut grads, clip);
    opt.step(store, &grads, lr).unwrap();
    value
}

// ---------------------------------------------------------------- MLP on two spirals

/// Two interleaved spirals (one turn each), `n` points per class: `(x[2n, 2], labels)`.
fn spirals(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<usize>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for class in 0..2 {
        for i in 0..n {
            let r = 0.1 + 0.9 * i as f32 / n as f32;
            let theta = class as f32 * PI + 2.0 * PI * r + 0.1 * rng.normal();
            x.extend([r * theta.cos(), r * theta.sin()]);
            y.push(class);
        }
    }
    (x, y)
}

/// Logits of a 2 -> 32 -> 32 -> 2 tanh MLP.
fn mlp(t: &Tape, p: &[Var], x: Var) -> Var {
    let h = t.tanh(t.linear(x, p[0], Some(p[1])).unwrap());
    let h = t.tanh(t.linear(h, p[2], Some(p[3])).unwrap());
    t.linear(h, p[4], Some(p[5])).unwrap()
}

#[test]
fn mlp_learns_two_spirals() {
    let mut rng = Rng::new(1);
    let (xs, ys) = spirals(100, &mut rng);
    let (xt, yt) = spirals(100, &mut rng); // held out
    let mut store = ParamStore::new();
    for (name, i, o) in [("fc1", 2, 32), ("fc2", 32, 32), ("fc3", 32, 2)] {
        store.add_linear(name, i, o, &mut rng).unwrap();
    }
    let eval = |store: &ParamStore| -> (f32, f32) {
        let t = Tape::no_grad();
        let p = bind_all(&t, store);
        let logits = mlp(&t, &p, t.constant(xt.clone(), &[yt.len(), 2]).unwrap());
        let all: Vec<usize> = (0..yt.len()).collect();
        let loss = t.scalar(t.cross_entropy_rows(logits, &yt, &all).unwrap());
        let l = t.value(logits);
        let correct = l
            .chunks(2)
            .zip(&yt)
            .filter(|&(l, &y)| (l[1] > l[0]) as usize == y);
        (loss, correct.count() as f32 / yt.len() as f32)
    };
    let (loss0, _) = eval(&store);
    let mut opt = AdamW::new(1e-4);
    let (steps, rows) = (400, (0..ys.len()).collect::<Vec<_>>());
    for s in 0..steps {
        let t = Tape::new();
        let p = bind_all(&t, &store);
        let x = t.constant(xs.clone(), &[ys.len(), 2]).unwrap();
        let loss = t.cross_entropy_rows(mlp(&t, &p, x), &ys, &rows).unwrap();
        step(
            t,
            loss,
            &mut store,
            &mut opt,
            cosine_lr(s, 20, steps, 2e-2, 1e-3),
            1.0,
        );
    }
    let (loss1, acc) = eval(&store);
    println!("spirals: held-out loss {loss0:.4} -> {loss1:.4}, accuracy {acc:.3}");
    assert!(loss1 < 0.5 * loss0, "{loss0} -> {loss1}");
    assert!(acc > 0.9, "accuracy {acc}");
}

// ---------------------------------------------------------------- ViT masked-token model

const MTM: MtmConfig = MtmConfig {
    vocab: 8,
    tokens: 8,
    width: 16,
    hidden: 32,
    heads: 2,
};

/// A batch of period-2 sequences `a b a b ...` (`a != b` random), 3 masked positions each:
/// a masked token is predictable only from the unmasked tokens of the same parity.
fn mtm_batch(batch: usize, rng: &mut Rng) -> (Vec<usize>, Vec<bool>) {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for _ in 0..batch {
        let a = rng.below(MTM.vocab);
        let b = (a + 1 + rng.below(MTM.vocab - 1)) % MTM.vocab;
        ids.extend((0..MTM.tokens).map(|i| if i % 2 == 0 { a } else { b }));
        let mut pos: Vec<usize> = (0..MTM.tokens).collect();
        rng.shuffle(&mut pos);
        let mut m = vec![false; MTM.tokens];
        pos[..3].iter().for_each(|&i| m[i] = true);
        mask.extend(m);
    }
    (ids, mask)
}

#[test]
fn vit_block_learns_masked_tokens() {
    let mut rng = Rng::new(2);
    let mut store = ParamStore::new();
    let no_decay = ["embed.tok", "embed.pos"];
    add_params(&mut store, &mtm_shapes(MTM), &mut rng, &no_decay);
    // Embeddings start at N(0, 0.5²)-like scale, as timm's trunc-normal inits do for ViTs.
    for name in no_decay {
        let id = store.id(name).unwrap();
        store
            .values_mut(id)
            .iter_mut()
            .for_each(|v| *v = 0.5 * rng.normal());
    }
    let (eval_ids, eval_mask) = mtm_batch(64, &mut rng);
    let eval = |store: &ParamStore| {
        let t = Tape::no_grad();
        let p = bind_all(&t, store);
        t.scalar(mtm_loss(&t, &p, MTM, &eval_ids, &eval_mask).unwrap())
    };
    let loss0 = eval(&store);
    let mut opt = AdamW::new(0.05);
    let steps = 300;
    for s in 0..steps {
        let (ids, mask) = mtm_batch(16, &mut rng);
        let t = Tape::new();
        let p = bind_all(&t, &store);
        let loss = mtm_loss(&t, &p, MTM, &ids, &mask).unwrap();
        step(
            t,
            loss,
            &mut store,
            &mut opt,
            cosine_lr(s, 20, steps, 3e-3, 1e-4),
            1.0,
        );
    }
    let loss1 = eval(&store);
    println!(
        "masked tokens: held-out CE {loss0:.4} -> {loss1:.4} (ln V = {:.4})",
        (MTM.vocab as f32).ln()
    );
    assert!(loss1 < 0.7 * loss0, "{loss0} -> {loss1}");
}

// ---------------------------------------------------------------- conditional coupling flow

/// Position encoding of `p` in [0, 1): `[sin 2πp, cos 2πp, sin 4πp, cos 4πp]`.
fn encode(p: f32) -> [f32; 4] {
    let a = 2.0 * PI * p;
    [a.sin(), a.cos(), (2.0 * a).sin(), (2.0 * a).cos()]
}

/// `n` samples of `x = μ(p) + L·ε`: a mean that circles with the position `p` and a fixed
/// correlated covariance `Σ = L Lᵀ = [[1, .8·.5], [.8·.5, .25]]`. Returns `(x, cond, nll)`,
/// `nll` the mean negative log-likelihood of the samples under the true density.
fn gaussian_data(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>, f64) {
    let (s1, s2, rho) = (1.0f64, 0.5f64, 0.8f64);
    let (mut x, mut cond, mut nll) = (Vec::new(), Vec::new(), 0.0f64);
    for _ in 0..n {
        let p = rng.uniform();
        let (mu1, mu2) = (1.5 * (2.0 * PI * p).cos(), 1.5 * (2.0 * PI * p).sin());
        let (e1, e2) = (rng.normal() as f64, rng.normal() as f64);
        let d1 = s1 * e1;
        let d2 = s2 * (rho * e1 + (1.0 - rho * rho).sqrt() * e2);
        x.extend([mu1 + d1 as f32, mu2 + d2 as f32]);
        cond.extend(encode(p));
        // -log N(d; 0, Σ) = ½ dᵀΣ⁻¹d + ½ log det(2πΣ), with dᵀΣ⁻¹d = e1² + e2² here.
        let det = s1 * s1 * s2 * s2 * (1.0 - rho * rho);
        nll += 0.5 * (e1 * e1 + e2 * e2) + 0.5 * ((2.0 * std::f64::consts::PI).powi(2) * det).ln();
    }
    (x, cond, nll / n as f64)
}

#[test]
fn coupling_flow_fits_conditional_gaussian() {
    let mut rng = Rng::new(3);
    let mut store = ParamStore::new();
    let mut shapes = coupling_shapes("flow.0", 2, 4, 32);
    shapes.extend(coupling_shapes("flow.1", 2, 4, 32));
    add_params(&mut store, &shapes, &mut rng, &[]);
    let (ex, ec, true_nll) = gaussian_data(512, &mut rng);
    let eval = |store: &ParamStore| {
        let t = Tape::no_grad();
        let p = bind_all(&t, store);
        let x = t.constant(ex.clone(), &[512, 2]).unwrap();
        let c = t.constant(ec.clone(), &[512, 4]).unwrap();
        t.scalar(flow_nll(&t, &p, x, c).unwrap()) as f64
    };
    let nll0 = eval(&store);
    let mut opt = AdamW::new(1e-4);
    let (steps, batch) = (500, 128);
    for s in 0..steps {
        let (x, c, _) = gaussian_data(batch, &mut rng);
        let t = Tape::new();
        let p = bind_all(&t, &store);
        let x = t.constant(x, &[batch, 2]).unwrap();
        let c = t.constant(c, &[batch, 4]).unwrap();
        let loss = flow_nll(&t, &p, x, c).unwrap();
        step(
            t,
            loss,
            &mut store,
            &mut opt,
            cosine_lr(s, 20, steps, 5e-3, 1e-4),
            5.0,
        );
    }
    let nll1 = eval(&store);
    println!("flow: held-out NLL {nll0:.4} -> {nll1:.4} (true density {true_nll:.4})");
    assert!(nll1 < nll0 - 0.5, "{nll0} -> {nll1}");
    assert!(
        nll1 < true_nll + 0.15,
        "{nll1} vs the true density's {true_nll}"
    );
}
