//! [`CudaDevice`]: one GPU, its default stream, the kernel modules (loaded lazily, once each)
//! and a lazily created cuBLAS handle.
//!
//! Opening never panics: cudarc's `CudaContext::new` panics when no `libcuda` can be loaded,
//! so [`CudaDevice::new`] checks `is_culib_present()` first and reports
//! [`CudaError::Unavailable`] with the reason for a missing driver, no device, a driver too old
//! to JIT the embedded PTX ISA, or a GPU below the lowest compute capability the PTX targets
//! (see [`support_problem`]). Every GPU from that capability up is accepted: the driver JITs
//! the PTX for it.
//!
//! A kernel file may come in several PTX variants, one per compute capability (see `build.rs`,
//! "Variants"); [`KernelModule::ptx_for`] picks the highest one the GPU supports.

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::{CudaError, CudaResult, ptx};

/// The kernel files of `kernels/`, one PTX module each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelModule {
    Attention,
    ProtoNn,
    TopkMask,
    Coupling,
    Entropy,
    Glue,
}

impl KernelModule {
    pub const ALL: [KernelModule; 6] = [
        KernelModule::Attention,
        KernelModule::ProtoNn,
        KernelModule::TopkMask,
        KernelModule::Coupling,
        KernelModule::Entropy,
        KernelModule::Glue,
    ];

    /// The `kernels/<name>.cu` stem.
    pub fn name(self) -> &'static str {
        match self {
            KernelModule::Attention => "attention",
            KernelModule::ProtoNn => "proto_nn",
            KernelModule::TopkMask => "topk_mask",
            KernelModule::Coupling => "coupling",
            KernelModule::Entropy => "entropy",
            KernelModule::Glue => "glue",
        }
    }

    /// Embedded PTX variants: (compute capability x10, PTX), lowest capability first.
    pub fn ptx(self) -> &'static [(u32, &'static str)] {
        match self {
            KernelModule::Attention => ptx::ATTENTION_PTX,
            KernelModule::ProtoNn => ptx::PROTO_NN_PTX,
            KernelModule::TopkMask => ptx::TOPK_MASK_PTX,
            KernelModule::Coupling => ptx::COUPLING_PTX,
            KernelModule::Entropy => ptx::ENTROPY_PTX,
            KernelModule::Glue => ptx::GLUE_PTX,
        }
    }

    /// Entry points found by ptxas in this module.
    pub fn kernels(self) -> &'static [&'static str] {
        match self {
            KernelModule::Attention => ptx::ATTENTION_KERNELS,
            KernelModule::ProtoNn => ptx::PROTO_NN_KERNELS,
            KernelModule::TopkMask => ptx::TOPK_MASK_KERNELS,
            KernelModule::Coupling => ptx::COUPLING_KERNELS,
            KernelModule::Entropy => ptx::ENTROPY_KERNELS,
            KernelModule::Glue => ptx::GLUE_KERNELS,
        }
    }

    /// The PTX to load on a GPU of compute capability `cc`: the variant for the highest
    /// capability not above it, or an error naming the capability this module needs.
    pub fn ptx_for(self, cc: (i32, i32)) -> CudaResult<&'static str> {
        let have = cc_x10(cc);
        let variants = self.ptx();
        variants
            .iter()
            .rev()
            .find(|(arch, _)| i64::from(*arch) <= have)
            .map(|(_, text)| *text)
            .ok_or_else(|| {
                let need = variants.first().map_or(0, |(arch, _)| *arch);
                CudaError::Unavailable(format!(
                    "the kernels of kernels/{}.cu need compute capability {}.{} or newer; this \
                     GPU is {}.{}",
                    self.name(),
                    need / 10,
                    need % 10,
                    cc.0,
                    cc.1
                ))
            })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `(major, minor)` -> `10 * major + minor`, the form of `build.rs`'s capabilities.
fn cc_x10(cc: (i32, i32)) -> i64 {
    10 * i64::from(cc.0) + i64::from(cc.1)
}

/// Why this build cannot run on a driver reporting `driver_version` (`cuDriverGetVersion`:
/// 1000 * major + 10 * minor of its CUDA version) and a GPU of compute capability `cc`, or
/// `None` when it can. Both limits come from the embedded PTX: see [`driver_problem`] and
/// [`capability_problem`].
pub fn support_problem(driver_version: i32, cc: (i32, i32)) -> Option<String> {
    driver_problem(driver_version).or_else(|| capability_problem(cc))
}

/// The driver must know the PTX ISA of the embedded modules: drivers JIT only the ISA versions
/// of their own CUDA release or older.
pub fn driver_problem(driver_version: i32) -> Option<String> {
    let (isa, min_driver) = (ptx::PTX_ISA, ptx::PTX_ISA_MIN_DRIVER);
    (driver_version < min_driver).then(|| {
        format!(
            "the NVIDIA driver supports CUDA {}.{}, but the embedded PTX (ISA {}.{}) needs a \
             driver for CUDA {}.{} or newer: update the driver",
            driver_version / 1000,
            driver_version % 1000 / 10,
            isa.0,
            isa.1,
            min_driver / 1000,
            min_driver % 1000 / 10
        )
    })
}

/// The GPU must be at least the lowest capability any PTX variant targets; the driver JITs the
/// PTX for every newer one.
pub fn capability_problem(cc: (i32, i32)) -> Option<String> {
    let base = i64::from(ptx::BASE_ARCH);
    (cc_x10(cc) < base).then(|| {
        format!(
            "compute capability {}.{} is below {}.{}, the lowest the kernels are built for \
             (compute_{base}: Turing or newer)",
            cc.0,
            cc.1,
            base / 10,
            base % 10
        )
    })
}

/// The environment variable that turns a missing GPU from a skip into a failure.
pub const REQUIRE_GPU_VAR: &str = "PMAD_REQUIRE_GPU";

/// Whether `PMAD_REQUIRE_GPU` is set (to anything but empty or `0`): on a machine that must
/// exercise the GPU (`scripts/device_check.sh` sets it), tests and benches that would print
/// "skipped: no CUDA device" fail instead, so a broken driver setup cannot pass as green.
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// One GPU with its default stream. Cheap to share (`Arc`), `Send + Sync`.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<[Option<Arc<CudaModule>>; 6]>,
    blas: OnceLock<Result<Arc<CudaBlas>, String>>,
    sm_count: u32,
    name: String,
    compute_capability: (i32, i32),
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("sm_count", &self.sm_count)
            .finish()
    }
}

impl CudaDevice {
    /// Opens device `ordinal`. Errors (never panics) when CUDA is unusable here.
    pub fn new(ordinal: usize) -> CudaResult<Arc<Self>> {
        // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "the CUDA driver library (libcuda.so) cannot be loaded".into(),
            ));
        }
        // A driver lacking a symbol cudarc resolves would panic inside cudarc: contain it.
        let driver_version = std::panic::catch_unwind(|| {
            let mut v: std::ffi::c_int = 0;
            // SAFETY: one valid out-pointer; cuDriverGetVersion needs no cuInit.
            unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
                .result()
                .map(|()| v)
        })
        .map_err(|_| CudaError::Unavailable("the CUDA driver panicked on init".into()))?
        .map_err(|e| CudaError::Unavailable(format!("cannot read the driver version: {e}")))?;
        if let Some(why) = driver_problem(driver_version) {
            return Err(CudaError::Unavailable(why));
        }
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| CudaError::Unavailable("the CUDA driver panicked on init".into()))?
            .map_err(|e| CudaError::Unavailable(format!("cannot open device {ordinal}: {e}")))?;
        let compute_capability = ctx.compute_capability()?;
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        if let Some(why) = capability_problem(compute_capability) {
            return Err(CudaError::Unavailable(format!("{name}: {why}")));
        }
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
            .max(1) as u32;
        let stream = ctx.default_stream();
        Ok(Arc::new(CudaDevice {
            ctx,
            stream,
            modules: Mutex::new(Default::default()),
            blas: OnceLock::new(),
            sm_count,
            name,
            compute_capability,
        }))
    }

    /// Device 0, opened once per process; the same error is returned to every caller when it
    /// is unavailable.
    pub fn shared() -> CudaResult<Arc<Self>> {
        static DEV: OnceLock<Result<Arc<CudaDevice>, String>> = OnceLock::new();
        let opened = DEV.get_or_init(|| {
            Self::new(0).map_err(|e| match e {
                CudaError::Unavailable(reason) => reason,
                other => other.to_string(),
            })
        });
        match opened {
            Ok(d) => Ok(d.clone()),
            Err(e) => Err(CudaError::Unavailable(e.clone())),
        }
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launcher enqueues on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Streaming multiprocessors (sizes grids such as proto_nn's bank split).
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The module of `kernels/<m>.cu`, JIT-loaded from the embedded PTX on first use.
    pub fn module(&self, m: KernelModule) -> CudaResult<Arc<CudaModule>> {
        let mut slots = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = &slots[m.index()] {
            return Ok(module.clone());
        }
        let ptx = m.ptx_for(self.compute_capability)?;
        let module = self
            .ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| match e.0 {
                // Named, so that a driver/PTX mismatch is not a bare error code.
                CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
                | CUresult::CUDA_ERROR_INVALID_PTX
                | CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU => CudaError::Unavailable(format!(
                    "the driver cannot JIT kernels/{}.cu (PTX ISA {}.{}) for {} ({}.{}): {e}",
                    m.name(),
                    ptx::PTX_ISA.0,
                    ptx::PTX_ISA.1,
                    self.name,
                    self.compute_capability.0,
                    self.compute_capability.1
                )),
                _ => CudaError::Driver(e),
            })?;
        slots[m.index()] = Some(module.clone());
        Ok(module)
    }

    /// A kernel of module `m` by its `extern "C"` name.
    pub fn function(&self, m: KernelModule, name: &str) -> CudaResult<CudaFunction> {
        Ok(self.module(m)?.load_function(name)?)
    }

    /// Loads every module now (surfaces JIT errors early, e.g. a driver too old for the PTX).
    pub fn load_all(&self) -> CudaResult<()> {
        for m in KernelModule::ALL {
            self.module(m)?;
        }
        Ok(())
    }

    /// The cuBLAS handle bound to [`Self::stream`], created on first use.
    pub fn blas(&self) -> CudaResult<Arc<CudaBlas>> {
        let r = self.blas.get_or_init(|| {
            // SAFETY: only tries to dlopen libcublas.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err("libcublas cannot be loaded".to_string());
            }
            // A cuBLAS lacking a symbol cudarc resolves would panic inside cudarc: contain it.
            std::panic::catch_unwind(|| CudaBlas::new(self.stream.clone()))
                .map_err(|_| "cuBLAS panicked on init (incompatible libcublas?)".to_string())?
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        r.clone().map_err(CudaError::Unavailable)
    }

    /// Host -> device copy.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> CudaResult<CudaSlice<T>> {
        if host.is_empty() {
            return Ok(self.stream.null()?);
        }
        Ok(self.stream.clone_htod(host)?)
    }

    /// Device -> host copy (synchronises with the stream).
    pub fn download<T: DeviceRepr>(&self, dev: &CudaSlice<T>) -> CudaResult<Vec<T>> {
        if dev.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.stream.clone_dtoh(dev)?)
    }

    /// A zero-filled buffer.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> CudaResult<CudaSlice<T>> {
        if n == 0 {
            return Ok(self.stream.null()?);
        }
        Ok(self.stream.alloc_zeros(n)?)
    }

    /// An output buffer a kernel overwrites completely before anything reads it.
    pub(crate) fn alloc_out<T: DeviceRepr>(&self, n: usize) -> CudaResult<CudaSlice<T>> {
        if n == 0 {
            return Ok(self.stream.null()?);
        }
        // SAFETY: the memory is uninitialised, which is sound for the plain-old-data element
        // types used here (every bit pattern is a valid f32/u32/u64); every caller launches a
        // kernel that writes all `n` elements on this stream before the buffer is returned.
        Ok(unsafe { self.stream.alloc(n) }?)
    }

    /// Waits for all work queued on the stream.
    pub fn synchronize(&self) -> CudaResult<()> {
        Ok(self.stream.synchronize()?)
    }
}
