//! The CUDA backend: the detector's device copies (backbone, ViT, class banks) and the
//! launches of the per-image stages on them ([`crate::cuda`] holds the kernels' launchers).

use std::sync::{Arc, OnceLock};

use crate::cuda::{CudaDevice, CudaSlice};
use crate::detector::features::FeatureExtractor;
use crate::detector::resident::{ScoreChain, Settings};
use crate::error::{Error, Result};
use crate::models::efficientnet_infer::InferFeatures;
use crate::ops::nn_search::Nearest;
use crate::recon::vit::Vit;
use crate::recon::vit_infer::InferVit;
use crate::tensor::Tensor;

use super::{CudaOps, Precision, Uncertainty};

/// Why `dev` cannot run GEMMs in `precision`, if it cannot: cuBLAS multiplies bf16 only from
/// compute capability 8.0 (Ampere) on. The emulated device serves every precision.
fn precision_problem(dev: &CudaDevice, precision: Precision) -> Option<String> {
    let (major, minor) = dev.compute_capability();
    (precision == Precision::Bf16 && major < 8 && !dev.is_emulated()).then(|| {
        format!(
            "--precision bf16 needs a GPU of compute capability 8.0 or newer (bf16 tensor \
             cores); {} is {major}.{minor}: use --precision f32",
            dev.name()
        )
    })
}

/// The detector's state on the GPU: the device, the backbone's and the ViT's weights.
pub struct CudaBackend {
    dev: Arc<CudaDevice>,
    ops: CudaOps,
    /// The one feature extraction on the CUDA op set, weights uploaded once.
    features: InferFeatures<CudaOps>,
    vit: Option<InferVit<CudaOps>>,
}

/// A class bank's copy on the device, uploaded on first use. Its `ClassModel` owns it, so a
/// new bank (a re-registration, a calibration fold) starts with no copy and can never be
/// served a stale one, as a cache keyed by class name could. (The codebook's copy is one too.)
#[derive(Clone, Default)]
pub struct DeviceBank(OnceLock<Arc<CudaSlice<f32>>>);

impl DeviceBank {
    /// The device copy of `host`, uploaded on the first call.
    pub(crate) fn get_or_upload(
        &self,
        dev: &CudaDevice,
        host: &[f32],
    ) -> crate::cuda::CudaResult<Arc<CudaSlice<f32>>> {
        if let Some(b) = self.0.get() {
            return Ok(b.clone());
        }
        let b = Arc::new(dev.upload(host)?);
        // Two threads may both upload; one copy wins and the other is dropped.
        Ok(self.0.get_or_init(|| b).clone())
    }
}

impl CudaBackend {
    /// Opens the shared device (an error, not a panic, without a usable GPU).
    /// `precision`: that of the GEMMs ([`Precision`]); bf16 needs a GPU of compute capability
    /// 8.0+ (tensor cores with bf16), or the emulated device.
    pub fn open(
        features: &FeatureExtractor,
        vit: Option<&Vit>,
        precision: Precision,
    ) -> Result<CudaBackend> {
        let dev = CudaDevice::shared()?;
        if let Some(why) = precision_problem(&dev, precision) {
            return Err(Error::invalid(why));
        }
        let ops = CudaOps::new(dev.clone(), precision);
        let mut s = CudaBackend {
            features: InferFeatures::new(ops.clone(), features)?,
            ops,
            dev,
            vit: None,
        };
        s.set_vit(vit)?;
        Ok(s)
    }

    /// Uploads (or drops) the ViT.
    pub(crate) fn set_vit(&mut self, vit: Option<&Vit>) -> Result<()> {
        self.vit = match vit {
            Some(v) => {
                let c = v.config();
                // The attention kernels hold one head's row in registers: at most 128 wide.
                if c.width / c.heads > 128 {
                    return Err(Error::invalid(format!(
                        "GPU ViT: head size {} / {} is over the attention kernels' 128",
                        c.width, c.heads
                    )));
                }
                Some(InferVit::new(self.ops.clone(), v)?)
            }
            None => None,
        };
        Ok(())
    }

    /// Feature rows `[B * grid², dim]` of the inputs `x` `[B, 3, S, S]`.
    pub(crate) fn features(&self, x: &Tensor) -> Result<Vec<f32>> {
        let rows = self.features.extract(&x.f32s(), x.dim(0))?;
        Ok(self.dev.download(&rows)?)
    }

    /// The ViT's per-patch uncertainty on the device copy; on `vit` itself (the CPU) when
    /// there is none (the model had no ViT when the device opened).
    pub(crate) fn token_uncertainty(
        &self,
        vit: &Vit,
        input: &[f32],
        masks: &[bool],
        tokens: Option<&[u32]>,
    ) -> Result<Uncertainty> {
        match &self.vit {
            Some(gv) => gv.token_uncertainty(input, masks, tokens),
            None => vit.token_uncertainty(input, masks, tokens),
        }
    }

    /// The resident scoring pass's models on the device ([`crate::detector::resident`]):
    /// only scores (and maps when asked for) come down.
    pub(crate) fn chain<'a>(&'a self, settings: Settings<'a>) -> ScoreChain<'a, CudaOps> {
        ScoreChain {
            ops: &self.ops,
            features: &self.features,
            vit: self.vit.as_ref(),
            settings,
        }
    }

    /// The number format of the GEMMs.
    pub(crate) fn precision(&self) -> Precision {
        self.ops.precision()
    }

    /// Bytes copied `(host -> device, device -> host)` so far on this (shared) device.
    pub(crate) fn bytes_copied(&self) -> (u64, u64) {
        self.dev.bytes_copied()
    }

    /// Exact nearest prototype of every row of `feats` in a class's `bank` (`[P, dim]`,
    /// uploaded into `on_device` on first use).
    pub(crate) fn nearest(
        &self,
        bank: &[f32],
        on_device: &DeviceBank,
        feats: &[f32],
        dim: usize,
    ) -> Result<Nearest> {
        let gpu_bank = on_device.get_or_upload(&self.dev, bank)?;
        let (nq, np) = (feats.len() / dim, bank.len() / dim);
        let q = self.dev.upload(feats)?;
        let (idx, dist) = self.ops.nearest(&q, &gpu_bank, nq, np, dim)?;
        Ok(Nearest {
            index: self.dev.download(&idx)?,
            dist2: self.dev.download(&dist)?,
        })
    }
}
