//! The CUDA backend: the detector's device copies (backbone, ViT, class banks) and the
//! launches of the per-image stages on them ([`crate::cuda`] holds the kernels' launchers).

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
pub struct CudaBackend {
    dev: Arc<CudaDevice>,
    features: CudaFeatures,
    vit: Option<CudaVit>,
    banks: Mutex<HashMap<String, Arc<CudaSlice<f32>>>>,
}

impl CudaBackend {
    /// Opens the shared device (an error, not a panic, without a usable GPU).
    pub fn open(features: &FeatureExtractor, vit: Option<&Vit>) -> Result<CudaBackend> {
        let dev = CudaDevice::shared()?;
        let mut s = CudaBackend {
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
