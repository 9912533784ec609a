//! `--precision f32|bf16`: the number format of the GPU's matrix products.
//!
//! `f32` is the reference (every backend op in f32, the CPU's results up to rounding). `bf16`
//! runs the GEMMs — the ViT's linears and the backbone's 1x1 and im2col convs — on tensor
//! cores: both operands rounded to bfloat16 (8 exponent bits, 8 significant bits: relative
//! rounding error at most 2^-9), products exact and summed in f32 (cuBLAS'
//! `CUBLAS_COMPUTE_32F`), the result f32. The nearest-prototype search does its bulk the same
//! way and stays exact (`crate::cuda::proto_nn::proto_nn_tc`: re-ranked in f32 under the
//! rounding's error bound). Attention (head dim <= 64) runs on tensor cores too
//! (`crate::cuda::attention::attention_fwd_tc`: q, k, v and the softmax weights in bf16,
//! sums and the softmax statistics in f32). Everything else (bias, activations, layernorm,
//! the maps) stays f32. The CPU computes in f32 only.

/// The number format of the GPU's GEMM operands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 operands (the reference).
    #[default]
    F32,
    /// bfloat16 operands, f32 accumulation and output (tensor cores; compute capability 8.0+).
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision '{s}' (f32 | bf16)")),
        }
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as its upper 16 bits:
/// the host twin of glue.cu's `f32_to_bf16` (what the GPU's bf16 GEMMs read).
pub fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("f16".parse::<Precision>().is_err());
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to the even significand, 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), bf16_bits(1.0));
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: rounds up to the even one.
        assert_eq!(
            f32::from_bits((bf16_bits(1.0 + 3.0 / 256.0) as u32) << 16),
            1.0 + 1.0 / 64.0
        );
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
    }
}
