//! Where the detector's heavy ops run: `--device cpu|cuda`.
//!
//! The CPU backend is always there. With the `cuda` feature, [`Device::Cuda`] moves the
//! per-image work of scoring (and of `register`'s embedding and calibration) to the GPU: the
//! backbone's feature extraction (`crate::cuda::backbone`), the nearest-prototype search
//! (the `proto_nn` kernel over the class's bank, uploaded once per class) and the
//! reconstruction stage's ViT (`crate::cuda::vit`). Weights go up once; each stage's forward
//! pass stays on the device, and stages hand over on the host (the proposal mask and maps are
//! CPU work). Coreset selection, the flow and training stay on the CPU. Results agree with
//! the CPU path up to f32 rounding (`tests/cuda_parity.rs`).

#[cfg(not(feature = "cuda"))]
use crate::error::Error;

/// A compute device for scoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            _ => Err(format!("unknown device '{s}' (cpu | cuda)")),
        }
    }
}

/// Whether this binary was built with the CUDA backend.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// The error for `--device cuda` in a CPU-only build.
#[cfg(not(feature = "cuda"))]
pub(crate) fn cuda_not_compiled() -> Error {
    Error::invalid(
        "this pmad was built without the CUDA backend; rebuild with \
         `cargo build --release --features cuda` (see README, CUDA backend)",
    )
}

#[cfg(feature = "cuda")]
pub(crate) use gpu::GpuState;

#[cfg(feature = "cuda")]
mod gpu {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use crate::cuda::backbone::CudaFeatures;
    use crate::cuda::proto_nn::{ProtoBank, proto_nn};
    use crate::cuda::vit::CudaVit;
    use crate::cuda::{CudaDevice, CudaSlice};
    use crate::detector::features::FeatureExtractor;
    use crate::error::Result;
    use crate::ops::nn_search::Nearest;
    use crate::recon::vit::Vit;
    use crate::tensor::Tensor;

    /// The detector's state on the GPU: the device, the ViT's weights, and each class's
    /// prototype bank (uploaded on first use, dropped when the class is registered again).
    pub(crate) struct GpuState {
        dev: Arc<CudaDevice>,
        features: CudaFeatures,
        vit: Option<CudaVit>,
        banks: Mutex<HashMap<String, Arc<CudaSlice<f32>>>>,
    }

    impl GpuState {
        /// Opens the shared device (an error, not a panic, without a usable GPU).
        pub(crate) fn open(features: &FeatureExtractor, vit: Option<&Vit>) -> Result<GpuState> {
            let dev = CudaDevice::shared()?;
            let mut s = GpuState {
                features: CudaFeatures::upload(dev.clone(), features)?,
                dev,
                vit: None,
                banks: Mutex::new(HashMap::new()),
            };
            s.set_vit(vit)?;
            Ok(s)
        }

        /// Uploads (or drops) the ViT.
        pub(crate) fn set_vit(&mut self, vit: Option<&Vit>) -> Result<()> {
            self.vit = match vit {
                Some(v) => Some(CudaVit::upload(self.dev.clone(), v)?),
                None => None,
            };
            Ok(())
        }

        /// Feature rows `[B * grid², dim]` of the inputs `x` `[B, 3, S, S]`.
        pub(crate) fn features(&self, x: &Tensor) -> Result<Vec<f32>> {
            let rows = self.features.extract(&x.f32s(), x.dim(0))?;
            Ok(self.dev.download(&rows)?)
        }

        pub(crate) fn vit(&self) -> Option<&CudaVit> {
            self.vit.as_ref()
        }

        /// Forgets a class's uploaded bank (after it was registered again).
        pub(crate) fn forget_class(&self, class: &str) {
            self.banks.lock().expect("bank cache").remove(class);
        }

        /// Exact nearest prototype of every row of `feats` in `class`'s `bank` (`[P, dim]`).
        pub(crate) fn nearest(
            &self,
            class: &str,
            bank: &[f32],
            feats: &[f32],
            dim: usize,
        ) -> Result<Nearest> {
            let gpu_bank = {
                let mut banks = self.banks.lock().expect("bank cache");
                match banks.get(class) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(self.dev.upload(bank)?);
                        banks.insert(class.to_string(), b.clone());
                        b
                    }
                }
            };
            let (nq, np) = (feats.len() / dim, bank.len() / dim);
            let q = self.dev.upload(feats)?;
            let (idx, dist) = proto_nn(&self.dev, &q, ProtoBank::F32(&gpu_bank), nq, np, dim)?;
            Ok(Nearest {
                index: self.dev.download(&idx)?,
                dist2: self.dev.download(&dist)?,
            })
        }
    }
}
