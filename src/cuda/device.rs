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
//!
//! The emulated device ([`CudaDevice::emulated`], the shared device of a `cuda-emu` build) has
//! the same interface with host memory behind its buffers: the launchers run unchanged, their
//! kernels execute as host C++ ([`super::launch`]) and cuBLAS calls as the CPU GEMM
//! ([`super::linear`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::buffer::{CudaSlice, DeviceElem, HostMem, Mem};
use super::{CudaError, CudaResult, ptx};

/// The kernel files of `kernels/`, one PTX module each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelModule {
    Attention,
    AttentionTc,
    ProtoNn,
    TopkMask,
    Coupling,
    Entropy,
    Glue,
    Score,
}

impl KernelModule {
    pub const ALL: [KernelModule; 8] = [
        KernelModule::Attention,
        KernelModule::AttentionTc,
        KernelModule::ProtoNn,
        KernelModule::TopkMask,
        KernelModule::Coupling,
        KernelModule::Entropy,
        KernelModule::Glue,
        KernelModule::Score,
    ];

    /// The `kernels/<name>.cu` stem.
    pub fn name(self) -> &'static str {
        match self {
            KernelModule::Attention => "attention",
            KernelModule::AttentionTc => "attention_tc",
            KernelModule::ProtoNn => "proto_nn",
            KernelModule::TopkMask => "topk_mask",
            KernelModule::Coupling => "coupling",
            KernelModule::Entropy => "entropy",
            KernelModule::Glue => "glue",
            KernelModule::Score => "score",
        }
    }

    /// Embedded PTX variants: (compute capability x10, PTX), lowest capability first.
    pub fn ptx(self) -> &'static [(u32, &'static str)] {
        match self {
            KernelModule::Attention => ptx::ATTENTION_PTX,
            KernelModule::AttentionTc => ptx::ATTENTION_TC_PTX,
            KernelModule::ProtoNn => ptx::PROTO_NN_PTX,
            KernelModule::TopkMask => ptx::TOPK_MASK_PTX,
            KernelModule::Coupling => ptx::COUPLING_PTX,
            KernelModule::Entropy => ptx::ENTROPY_PTX,
            KernelModule::Glue => ptx::GLUE_PTX,
            KernelModule::Score => ptx::SCORE_PTX,
        }
    }

    /// Entry points found by ptxas in this module.
    pub fn kernels(self) -> &'static [&'static str] {
        match self {
            KernelModule::Attention => ptx::ATTENTION_KERNELS,
            KernelModule::AttentionTc => ptx::ATTENTION_TC_KERNELS,
            KernelModule::ProtoNn => ptx::PROTO_NN_KERNELS,
            KernelModule::TopkMask => ptx::TOPK_MASK_KERNELS,
            KernelModule::Coupling => ptx::COUPLING_KERNELS,
            KernelModule::Entropy => ptx::ENTROPY_KERNELS,
            KernelModule::Glue => ptx::GLUE_KERNELS,
            KernelModule::Score => ptx::SCORE_KERNELS,
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

/// One GPU with its default stream, or the emulated device. Cheap to share (`Arc`),
/// `Send + Sync`.
pub struct CudaDevice {
    backing: Backing,
    sm_count: u32,
    name: String,
    compute_capability: (i32, i32),
    /// Bytes copied host -> device and device -> host so far (`inspect --timings`).
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// What executes a [`CudaDevice`]'s work.
pub(crate) enum Backing {
    /// A GPU through the CUDA driver.
    Driver(DriverDevice),
    /// `kernels/emu` on the host (feature `cuda-emu`); buffers are host memory.
    Emulated,
}

/// A GPU's context, stream, loaded modules and cuBLAS handle.
pub(crate) struct DriverDevice {
    ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    modules: Mutex<[Option<Arc<CudaModule>>; KernelModule::ALL.len()]>,
    blas: OnceLock<Result<Arc<CudaBlas>, String>>,
}

/// The name the emulated device reports.
pub const EMULATED_NAME: &str = "emulated CUDA device (kernels/emu on the host)";

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ordinal = match &self.backing {
            Backing::Driver(d) => Some(d.ctx.ordinal()),
            Backing::Emulated => None,
        };
        f.debug_struct("CudaDevice")
            .field("ordinal", &ordinal)
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
        // SAFETY: pmad queues all its work on one stream (the context's default stream), and
        // cudarc's event tracking only orders buffer uses *between* streams; left on, it would
        // create and destroy two CUDA events with every allocation for nothing.
        unsafe { ctx.disable_event_tracking() };
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
            backing: Backing::Driver(DriverDevice {
                ctx,
                stream,
                modules: Mutex::new(Default::default()),
                blas: OnceLock::new(),
            }),
            sm_count,
            name,
            compute_capability,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }))
    }

    /// The emulated device: host memory, kernels as host C++. It reports the base compute
    /// capability and one SM (launchers size their grids from it: small grids, so that the
    /// grid-stride loops run more than once). An error in a build without `cuda-emu`.
    pub fn emulated() -> CudaResult<Arc<Self>> {
        if !super::launch::emulator::PRESENT {
            return Err(CudaError::Unavailable(
                "this pmad was built without the emulated device (feature `cuda-emu`)".into(),
            ));
        }
        let base = ptx::BASE_ARCH as i32;
        Ok(Arc::new(CudaDevice {
            backing: Backing::Emulated,
            sm_count: 1,
            name: EMULATED_NAME.into(),
            compute_capability: (base / 10, base % 10),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }))
    }

    /// Whether this is the emulated device.
    pub fn is_emulated(&self) -> bool {
        matches!(self.backing, Backing::Emulated)
    }

    pub(crate) fn backing(&self) -> &Backing {
        &self.backing
    }

    /// The driver side of a GPU device; an error on the emulated one.
    fn driver(&self) -> CudaResult<&DriverDevice> {
        match &self.backing {
            Backing::Driver(d) => Ok(d),
            Backing::Emulated => Err(CudaError::Invalid(
                "a driver-only call on the emulated device".into(),
            )),
        }
    }

    /// The process's device, opened once: GPU 0 — or, in a build with the `cuda-emu` feature
    /// (CI's), the emulated device (unavailable when `PMAD_REQUIRE_GPU` asks for a real GPU).
    /// The same error is returned to every caller when it is unavailable.
    pub fn shared() -> CudaResult<Arc<Self>> {
        static DEV: OnceLock<Result<Arc<CudaDevice>, String>> = OnceLock::new();
        let opened = DEV.get_or_init(|| {
            let dev = if super::launch::emulator::PRESENT {
                if gpu_required() {
                    // A GPU check must not pass on the emulator.
                    return Err(format!(
                        "{REQUIRE_GPU_VAR} is set but this is a `cuda-emu` build, whose device \
                         is the emulator: build with `--features cuda`"
                    ));
                }
                Self::emulated()
            } else {
                Self::new(0)
            };
            dev.map_err(|e| match e {
                CudaError::Unavailable(reason) => reason,
                other => other.to_string(),
            })
        });
        match opened {
            Ok(d) => Ok(d.clone()),
            Err(e) => Err(CudaError::Unavailable(e.clone())),
        }
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

    /// The module of `kernels/<m>.cu`, JIT-loaded from the embedded PTX on first use (GPU
    /// only).
    pub fn module(&self, m: KernelModule) -> CudaResult<Arc<CudaModule>> {
        let d = self.driver()?;
        let mut slots = d.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = &slots[m.index()] {
            return Ok(module.clone());
        }
        let ptx = m.ptx_for(self.compute_capability)?;
        let module = d
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

    /// A kernel of module `m` by its `extern "C"` name (GPU only).
    pub fn function(&self, m: KernelModule, name: &str) -> CudaResult<CudaFunction> {
        Ok(self.module(m)?.load_function(name)?)
    }

    /// Checks that kernel `name` of module `m` can be launched here: loaded from its module
    /// on a GPU, present in the emulator's launch table on the emulated device.
    pub fn check_kernel(&self, m: KernelModule, name: &str) -> CudaResult<()> {
        match &self.backing {
            Backing::Driver(_) => self.function(m, name).map(drop),
            Backing::Emulated => match super::launch::emulator::has_kernel(name)? {
                true => Ok(()),
                false => Err(CudaError::Invalid(format!(
                    "the emulator has no kernel {name} (kernels/{}.cu)",
                    m.name()
                ))),
            },
        }
    }

    /// Loads every module this GPU can run now (surfaces JIT errors early, e.g. a driver too
    /// old for the PTX); nothing to load on the emulated device. Modules built only for a
    /// newer capability than the GPU's (the tensor-core attention, 8.0+) are skipped: they
    /// serve `--precision bf16`, which such a GPU refuses up front.
    pub fn load_all(&self) -> CudaResult<()> {
        if self.is_emulated() {
            return Ok(());
        }
        let have = cc_x10(self.compute_capability);
        for m in KernelModule::ALL {
            if m.ptx()
                .first()
                .is_some_and(|(arch, _)| i64::from(*arch) <= have)
            {
                self.module(m)?;
            }
        }
        Ok(())
    }

    /// The cuBLAS handle bound to the stream, created on first use (GPU only).
    pub fn blas(&self) -> CudaResult<Arc<CudaBlas>> {
        let d = self.driver()?;
        let r = d.blas.get_or_init(|| {
            // SAFETY: only tries to dlopen libcublas.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err("libcublas cannot be loaded".to_string());
            }
            // A cuBLAS lacking a symbol cudarc resolves would panic inside cudarc: contain it.
            std::panic::catch_unwind(|| CudaBlas::new(d.stream.clone()))
                .map_err(|_| "cuBLAS panicked on init (incompatible libcublas?)".to_string())?
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        r.clone().map_err(CudaError::Unavailable)
    }

    /// Bytes copied `(host -> device, device -> host)` since the device opened, by every
    /// user of this (process-wide) device.
    pub fn bytes_copied(&self) -> (u64, u64) {
        (
            self.bytes_up.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed),
        )
    }

    /// Host -> device copy.
    pub fn upload<T: DeviceElem>(&self, host: &[T]) -> CudaResult<CudaSlice<T>> {
        self.bytes_up
            .fetch_add(std::mem::size_of_val(host) as u64, Ordering::Relaxed);
        let mem = match &self.backing {
            Backing::Emulated => Mem::Host(HostMem::from_slice(host)),
            Backing::Driver(_) if host.is_empty() => Mem::Empty,
            Backing::Driver(d) => Mem::Driver(d.stream.clone_htod(host)?),
        };
        Ok(CudaSlice { mem })
    }

    /// Device -> host copy (synchronises with the stream).
    pub fn download<T: DeviceElem>(&self, dev: &CudaSlice<T>) -> CudaResult<Vec<T>> {
        self.bytes_down.fetch_add(
            (dev.len() * std::mem::size_of::<T>()) as u64,
            Ordering::Relaxed,
        );
        match (&self.backing, &dev.mem) {
            (_, Mem::Host(h)) => Ok(h.as_slice().to_vec()),
            (_, Mem::Empty) => Ok(Vec::new()),
            (_, Mem::Driver(s)) if s.is_empty() => Ok(Vec::new()),
            (Backing::Driver(d), Mem::Driver(s)) => Ok(d.stream.clone_dtoh(s)?),
            (Backing::Emulated, Mem::Driver(_)) => Err(CudaError::Invalid(
                "download: a GPU buffer on the emulated device".into(),
            )),
        }
    }

    /// A zero-filled buffer.
    pub fn zeros<T: DeviceElem>(&self, n: usize) -> CudaResult<CudaSlice<T>> {
        let mem = match &self.backing {
            Backing::Emulated => Mem::Host(HostMem::zeros(n)),
            Backing::Driver(_) if n == 0 => Mem::Empty,
            Backing::Driver(d) => Mem::Driver(d.stream.alloc_zeros(n)?),
        };
        Ok(CudaSlice { mem })
    }

    /// An output buffer a kernel overwrites completely before anything reads it.
    pub(crate) fn alloc_out<T: DeviceElem>(&self, n: usize) -> CudaResult<CudaSlice<T>> {
        let mem = match &self.backing {
            // Poisoned (NaN): an element the kernel fails to write is caught.
            Backing::Emulated => Mem::Host(HostMem::poisoned(n)),
            Backing::Driver(_) if n == 0 => Mem::Empty,
            // SAFETY: the memory is uninitialised, which is sound for the plain-old-data
            // element types used here (every bit pattern is a valid f32/u32/u64); every caller
            // launches a kernel that writes all `n` elements on this stream before the buffer
            // is returned.
            Backing::Driver(d) => Mem::Driver(unsafe { d.stream.alloc(n) }?),
        };
        Ok(CudaSlice { mem })
    }

    /// Waits for all work queued on the stream.
    pub fn synchronize(&self) -> CudaResult<()> {
        match &self.backing {
            Backing::Driver(d) => Ok(d.stream.synchronize()?),
            // Every emulated launch has finished when it returns.
            Backing::Emulated => Ok(()),
        }
    }
}
