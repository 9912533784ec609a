//! Launcher of `kernels/entropy.cu`: per row of logits `[R, V]`, log-sum-exp, entropy of the
//! softmax (nats), optionally the cross-entropy against a target id and the probabilities.
//! One 256-thread block per row (V up to 8192 is 32 elements per thread), single pass with
//! online rescaling, second pass only to write probabilities.

use super::CudaSlice;
use super::launch::KernelArg::{In, Out, Params};
use super::launch::launch;

use super::params::EntropyParams;
use super::{CudaDevice, CudaError, CudaResult, KernelModule, block_per_item, check_len, to_i32};

/// Outputs of [`entropy_fwd`].
#[derive(Debug)]
pub struct EntropyOut {
    /// `[R]` log-sum-exp of each row.
    pub lse: CudaSlice<f32>,
    /// `[R]` `-sum p log p`.
    pub entropy: CudaSlice<f32>,
    /// `[R]` `lse - x[target]` (0 where the target is negative or >= V), when targets were given.
    pub ce: Option<CudaSlice<f32>>,
    /// `[R, V]` softmax, when asked for.
    pub probs: Option<CudaSlice<f32>>,
}

/// Softmax statistics of each row of `logits` `[rows, vocab]`.
pub fn entropy_fwd(
    dev: &CudaDevice,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    targets: Option<&CudaSlice<u32>>,
    write_probs: bool,
) -> CudaResult<EntropyOut> {
    check_len("entropy_fwd", "logits", logits.len(), rows * vocab)?;
    if let Some(t) = targets {
        check_len("entropy_fwd", "targets", t.len(), rows)?;
    }
    if vocab == 0 && rows > 0 {
        return Err(CudaError::Invalid("entropy_fwd: vocab must be >= 1".into()));
    }
    to_i32(rows * vocab, "entropy rows*vocab")?;
    let p = EntropyParams {
        rows: to_i32(rows, "rows")?,
        vocab: to_i32(vocab, "vocab")?,
        has_targets: targets.is_some() as i32,
        write_probs: write_probs as i32,
    };
    let mut lse = dev.alloc_out::<f32>(rows)?;
    let mut entropy = dev.alloc_out::<f32>(rows)?;
    // Absent outputs/inputs get a 1-element placeholder the kernel never touches (flags 0).
    let mut ce = dev.alloc_out::<f32>(if targets.is_some() { rows } else { 1 })?;
    let mut probs = dev.alloc_out::<f32>(if write_probs { rows * vocab } else { 1 })?;
    let placeholder;
    let targets_arg = match targets {
        Some(t) => t,
        None => {
            placeholder = dev.zeros::<u32>(1)?;
            &placeholder
        }
    };
    if rows > 0 {
        let cfg = block_per_item(rows)?;
        // SAFETY: `(const float* logits, const int* targets, float* probs, float* lse,
        // float* entropy, float* ce, EntropyParams)`; logits [R,V], lse/entropy [R]; targets
        // and ce are [R] when has_targets, probs [R,V] when write_probs, otherwise unused.
        unsafe {
            launch(
                dev,
                KernelModule::Entropy,
                "entropy_fwd_f32",
                cfg,
                &mut [
                    In(logits),
                    In(targets_arg),
                    Out(&mut probs),
                    Out(&mut lse),
                    Out(&mut entropy),
                    Out(&mut ce),
                    Params(&p),
                ],
            )
        }?;
    }
    Ok(EntropyOut {
        lse,
        entropy,
        ce: targets.is_some().then_some(ce),
        probs: write_probs.then_some(probs),
    })
}
