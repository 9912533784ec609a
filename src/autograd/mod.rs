//! A small reverse-mode automatic differentiation engine for training PMAD's networks on the
//! CPU: a [`Tape`] of f32 nodes with one backward closure each, the differentiable ops the
//! models need (one family per file, each documenting its gradient), named parameters, AdamW
//! with a cosine schedule, and a finite-difference [`gradcheck`](gradcheck::gradcheck).
//!
//! Files (ops are `Tape` methods; each documents its gradient formula):
//! - `tape.rs`: [`Tape`], [`Var`], [`Grads`], leaves (`constant`, `variable`, `param`) and
//!   `backward`; `params.rs`: [`ParamStore`], [`ParamGrads`];
//! - `arith.rs`: `add`, `sub`, `mul` (same shape or broadcast of a shape suffix), `scale`,
//!   `add_scalar`; `unary.rs`: `exp`, `square`, `tanh`, `relu`, `gelu`, `soft_clamp`, `map`;
//! - `reduce.rs`: `sum`, `mean`, `sumsq`, `sum_rows`; `shape.rs`: `reshape`, `slice_cols`,
//!   `concat_cols`; `select.rs`: `gather_rows`, `embedding`, `mask_token_select`;
//! - `linear.rs`: `matmul`, `linear`; `layernorm.rs`: `layernorm`; `attention.rs`:
//!   `attention` (fused multi-head), `split_qkv`; `loss.rs`: `cross_entropy_rows`;
//! - `optim.rs`: [`AdamW`], [`cosine_lr`], [`clip_grad_norm`]; `gradcheck.rs`.
//!
//! One training step:
//! ```
//! use pmad::autograd::{AdamW, ParamStore, Tape, clip_grad_norm, cosine_lr};
//! use pmad::rng::Rng;
//! # fn main() -> pmad::Result<()> {
//! let mut rng = Rng::new(0);
//! let mut params = ParamStore::new();
//! params.add_linear("fc1", 2, 8, &mut rng)?;
//! params.add_linear("fc2", 8, 2, &mut rng)?;
//! let mut opt = AdamW::new(0.05);
//! for step in 0..3 {
//!     let t = Tape::new();
//!     let x = t.constant(vec![0.5, -1.0, 1.5, 0.2], &[2, 2])?;
//!     let p = |name: &str| t.param(&params, name);
//!     let h = t.gelu(t.linear(x, p("fc1.weight")?, Some(p("fc1.bias")?))?);
//!     let logits = t.linear(h, p("fc2.weight")?, Some(p("fc2.bias")?))?;
//!     let loss = t.cross_entropy_rows(logits, &[0, 1], &[0, 1])?;
//!     let mut grads = t.backward(loss)?.into_params();
//!     clip_grad_norm(&mut grads, 1.0);
//!     opt.step(&mut params, &grads, cosine_lr(step, 1, 3, 1e-2, 1e-4))?;
//! }
//! # Ok(())
//! # }
//! ```

mod arith;
mod attention;
pub mod gradcheck;
mod layernorm;
mod linear;
mod loss;
pub mod optim;
mod params;
mod reduce;
mod select;
mod shape;
mod tape;
mod unary;

pub use optim::{AdamW, clip_grad_norm, cosine_lr};
pub use params::{ParamGrads, ParamId, ParamStore};
pub use tape::{BackwardFn, Grads, Tape, Var};
