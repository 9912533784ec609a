//! The backend seam: where the detector's per-image work runs (`--device cpu|cuda`).
//!
//! [`Backend`] is a closed enum of the two backends this engine has, not a trait object:
//! there are exactly two, the detector's model code matches on them in one place (this
//! module), and an enum keeps `Detector` a plain `Send + Sync` struct with no generic
//! parameter spreading through the API. Without the `cuda` feature the CUDA arm holds an
//! *uninhabited* type (`dummy_cuda.rs`, after candle's dummy backend): the match arms still
//! compile, cost nothing, and no `#[cfg(feature = "cuda")]` is needed outside this module and
//! `src/cuda/`.
//!
//! Models are written once, over the op sets [`InferOps`] and [`ConvOps`] (`ops.rs`): a
//! forward generic over them runs on the CPU ([`CpuOps`], `cpu_ops.rs`: the `src/ops` kernels)
//! and on the GPU (`CudaOps`, `cuda_ops.rs`: the `src/cuda` launchers), so the two backends
//! cannot drift apart in the math. Training stays on the CPU's autograd tape.
//!
//! What runs where today (issue 11 moves more behind this seam):
//! - CPU: everything, through `src/ops` (the reference); the patch features and the ViT's
//!   inference through the same generic code the GPU runs, on `CpuOps`.
//! - CUDA: the backbone's feature extraction — the one extraction
//!   ([`crate::models::efficientnet_infer`]: EfficientNet-Lite taps, resize, pooling,
//!   projections, every input normalisation) on `CudaOps`, weights uploaded once — the
//!   nearest-prototype search (the `proto_nn` kernel over the class's bank, uploaded once per
//!   class) and the reconstruction stage's ViT — the one inference forward
//!   ([`crate::recon::vit_infer`]) on `CudaOps`, weights uploaded once. `pmad classify`'s
//!   logits stay on the CPU's own pass (`EfficientNetLite::forward`).
//!   Inspection is device-resident: [`crate::detector::resident`], written once over
//!   [`ScoreOps`], keeps every stage after the pixels' upload on the device (search, proposal
//!   mask, codebook tokens, ViT, product, resize, blur, image score) and brings down only
//!   the scores, the per-stage non-finite flags and, when asked, the maps. The staged path
//!   (stages handing over on the host) serves the flow, reweighting, random masks and
//!   `eval`; coreset selection, the flow and training stay on the CPU. Results agree with
//!   the CPU path up to f32 rounding (`tests/seam_parity.rs`, `tests/cuda_e2e.rs`). A `cuda-emu` build runs
//!   this backend on an emulated device (`crate::cuda::launch`): what CI executes.

mod cpu_ops;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "dummy_cuda.rs"]
mod cuda;
#[cfg(feature = "cuda")]
mod cuda_ops;
mod ops;
mod precision;

pub use cpu_ops::{CpuOps, CpuWeight};
pub use cuda::{CudaBackend, DeviceBank};
#[cfg(feature = "cuda")]
pub use cuda_ops::CudaOps;
pub use ops::{Conv, ConvOps, InferOps, Linear, MbConv, Norm, RowEntropy, SCORE_STAGES, ScoreOps};
pub use precision::{Precision, bf16_bits};

use crate::detector::device::Device;
use crate::detector::features::FeatureExtractor;
use crate::detector::model_dir::ScoreKind;
use crate::detector::pipeline::ClassModel;
use crate::detector::resident::{self, ScoreChain, Settings};
use crate::detector::scoring::AnomalyMap;
use crate::error::Result;
use crate::models::efficientnet_infer::InferFeatures;
use crate::ops::nn_search::Nearest;
use crate::recon::vit::Vit;
use crate::recon::vit_infer::InferVit;
use crate::tensor::Tensor;

/// Whether this binary was built with the CUDA backend.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// The backend the detector scores on.
pub enum Backend {
    /// The CPU reference (`src/ops`); always available.
    Cpu,
    /// The CUDA backend: device copies of the backbone, the ViT and the class banks (boxed:
    /// it is large, and `Cpu` is empty).
    Cuda(Box<CudaBackend>),
}

/// The ViT's per-patch uncertainties: `(entropy or CE per patch, optional second score)`,
/// as [`Vit::token_uncertainty`] returns them.
pub type Uncertainty = (Vec<f32>, Option<Vec<f32>>);

impl Backend {
    /// Opens `device` for a model with these features (and ViT, when trained). A CUDA
    /// request fails with a clear error when the binary has no CUDA backend or no usable GPU.
    /// `precision` is that of the GPU's GEMMs ([`Precision`]); the CPU computes in f32 only.
    pub fn open(
        device: Device,
        precision: Precision,
        features: &FeatureExtractor,
        vit: Option<&Vit>,
    ) -> Result<Self> {
        Ok(match (device, precision) {
            (Device::Cpu, Precision::F32) => Backend::Cpu,
            (Device::Cpu, p) => {
                return Err(crate::error::Error::invalid(format!(
                    "--precision {} runs the GPU's GEMMs on tensor cores (--device cuda); the \
                     CPU computes in f32",
                    p.name()
                )));
            }
            (Device::Cuda, p) => Backend::Cuda(Box::new(CudaBackend::open(features, vit, p)?)),
        })
    }

    /// The number format of the GEMMs (f32 on the CPU).
    pub fn precision(&self) -> Precision {
        match self {
            Backend::Cpu => Precision::F32,
            Backend::Cuda(gpu) => gpu.precision(),
        }
    }

    /// Which device this is.
    pub fn device(&self) -> Device {
        match self {
            Backend::Cpu => Device::Cpu,
            Backend::Cuda(_) => Device::Cuda,
        }
    }

    /// Patch features `[B * grid², dim]` of the network inputs `x` `[B, 3, S, S]`.
    pub fn features(&self, features: &FeatureExtractor, x: &Tensor) -> Result<Vec<f32>> {
        match self {
            Backend::Cpu => Ok(features.extract(x)?.into_f32_vec()),
            Backend::Cuda(gpu) => gpu.features(x),
        }
    }

    /// Exact nearest prototype of every row of `feats` in a class's bank (`[P, dim]`): the
    /// CPU searches through the bank's index (built on its first search), the GPU scans its
    /// device copy (owned by the class model and uploaded on first use).
    pub fn nearest(&self, class: &ClassModel, feats: &[f32], dim: usize) -> Result<Nearest> {
        match self {
            Backend::Cpu => Ok(class.search_index(dim).nearest(feats)),
            Backend::Cuda(gpu) => gpu.nearest(&class.bank, &class.on_device, feats, dim),
        }
    }

    /// The ViT's per-patch uncertainty of masked inputs ([`Vit::token_uncertainty`]): the one
    /// inference forward ([`crate::recon::vit_infer`]) on either backend (on the CPU when the
    /// device holds no ViT).
    pub fn token_uncertainty(
        &self,
        vit: &Vit,
        input: &[f32],
        masks: &[bool],
        tokens: Option<&[u32]>,
    ) -> Result<Uncertainty> {
        match self {
            Backend::Cpu => vit.token_uncertainty(input, masks, tokens),
            Backend::Cuda(gpu) => gpu.token_uncertainty(vit, input, masks, tokens),
        }
    }

    /// The resident scoring pass ([`crate::detector::resident`]) of the network inputs `x`
    /// (`[batch, 3, S, S]`): on the GPU with its device copies, every stage on the device; on
    /// the CPU with [`CpuOps`] over the detector's own weights (shared, not copied), which
    /// scores exactly as the staged CPU path (the CPU's inspection keeps that path; this is
    /// its twin for tests).
    #[allow(clippy::too_many_arguments)]
    pub fn score_resident(
        &self,
        features: &FeatureExtractor,
        vit: Option<&Vit>,
        settings: Settings<'_>,
        class: &ClassModel,
        x: &[f32],
        batch: usize,
        kind: ScoreKind,
        want_maps: bool,
    ) -> Result<Vec<AnomalyMap>> {
        match self {
            Backend::Cpu => {
                let feats = InferFeatures::new(CpuOps, features)?;
                let vit = vit.map(|v| InferVit::new(CpuOps, v)).transpose()?;
                let chain = ScoreChain {
                    ops: &CpuOps,
                    features: &feats,
                    vit: vit.as_ref(),
                    settings,
                };
                resident::score(&chain, class, x, batch, kind, want_maps)
            }
            Backend::Cuda(gpu) => {
                resident::score(&gpu.chain(settings), class, x, batch, kind, want_maps)
            }
        }
    }

    /// Bytes copied `(host -> device, device -> host)` so far by this process's device;
    /// `None` on the CPU.
    pub fn bytes_copied(&self) -> Option<(u64, u64)> {
        match self {
            Backend::Cpu => None,
            Backend::Cuda(gpu) => Some(gpu.bytes_copied()),
        }
    }

    /// Installs a new ViT on the device (nothing on the CPU, which reads the detector's).
    pub fn set_vit(&mut self, vit: &Vit) -> Result<()> {
        match self {
            Backend::Cpu => Ok(()),
            Backend::Cuda(gpu) => gpu.set_vit(Some(vit)),
        }
    }
}
