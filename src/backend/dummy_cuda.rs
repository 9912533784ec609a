//! The CUDA backend of a build without the `cuda` feature: an uninhabited type with the real
//! one's methods, so `Backend::Cuda` arms compile everywhere and can never be reached (only
//! [`CudaBackend::open`] can be called, and it explains how to get a CUDA build).

use crate::backend::{CpuOps, Precision};
use crate::detector::features::FeatureExtractor;
use crate::detector::resident::{ScoreChain, Settings};
use crate::error::{Error, Result};
use crate::ops::nn_search::Nearest;
use crate::recon::vit::Vit;
use crate::tensor::Tensor;

/// No value of this type exists: this binary has no CUDA backend.
pub enum CudaBackend {}

/// A class bank's device copy: nothing to hold without a CUDA backend.
#[derive(Clone, Default)]
pub struct DeviceBank(());

impl CudaBackend {
    /// Always an error: this pmad was built without the CUDA backend.
    pub fn open(
        _features: &FeatureExtractor,
        _vit: Option<&Vit>,
        _precision: Precision,
    ) -> Result<CudaBackend> {
        Err(Error::invalid(
            "this pmad was built without the CUDA backend; rebuild with \
             `cargo build --release --features cuda` (see README, CUDA backend)",
        ))
    }

    pub(crate) fn set_vit(&mut self, _vit: Option<&Vit>) -> Result<()> {
        match *self {}
    }

    pub(crate) fn features(&self, _x: &Tensor) -> Result<Vec<f32>> {
        match *self {}
    }

    pub(crate) fn token_uncertainty(
        &self,
        _vit: &Vit,
        _input: &[f32],
        _masks: &[bool],
        _tokens: Option<&[u32]>,
    ) -> Result<super::Uncertainty> {
        match *self {}
    }

    pub(crate) fn nearest(
        &self,
        _bank: &[f32],
        _on_device: &DeviceBank,
        _feats: &[f32],
        _dim: usize,
    ) -> Result<Nearest> {
        match *self {}
    }

    pub(crate) fn chain<'a>(&'a self, _settings: Settings<'a>) -> ScoreChain<'a, CpuOps> {
        match *self {}
    }

    pub(crate) fn bytes_copied(&self) -> (u64, u64) {
        match *self {}
    }

    pub(crate) fn precision(&self) -> Precision {
        match *self {}
    }
}
