//! Where the detector's heavy ops run: `--device cpu|cuda` (the backends themselves are in
//! [`crate::backend`]).

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

pub use crate::backend::CUDA_COMPILED;
