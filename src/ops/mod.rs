//! Numeric ops. Each file holds one op family: a comment on the math, the CPU kernel on plain
//! slices (the reference every other backend is tested against), and a `Tensor`-level wrapper
//! that checks shapes. Kernels use all cores through rayon.

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_simd;
pub mod blur;
pub mod conv;
pub mod depthwise;
mod depthwise_cl;
pub mod elementwise;
pub mod fastexp;
mod interleave;
pub mod layernorm;
pub mod matmul;
pub mod mbconv;
pub mod microgemm;
pub mod nn_search;
pub mod pool;
pub mod resize;
pub mod softmax;
pub mod spare;
#[doc(hidden)]
pub mod testutil;
pub mod topk;

pub use attention::attention;
pub use conv::{Activation, Padding, conv2d};
pub use elementwise::{add, gelu, mul, relu6};
pub use layernorm::layernorm;
pub use matmul::{bmm, linear, matmul};
pub use nn_search::nearest;
pub use pool::{avg_pool, global_mean};
pub use resize::resize_bilinear;
pub use softmax::{cross_entropy, entropy, log_softmax, softmax};
