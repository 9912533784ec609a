//! [`launch`]: the one way a launcher starts a kernel, on either device.
//!
//! Every launcher builds the same thing for both: the kernel's module and name, its grid,
//! block and dynamic shared memory ([`LaunchConfig`]), and its arguments in order
//! ([`KernelArg`]: buffers the kernel reads, buffers it writes, the parameter block).
//! - On a GPU they go to cudarc's launch builder, as `cuLaunchKernel` arguments.
//! - On the emulated device (feature `cuda-emu`) they go, with the same grid, block, shared
//!   memory and `void**` argument array (`params[i]` points at the i-th argument: a variable
//!   holding the buffer's address, or the parameter block itself), to `pmad_emu_launch` of
//!   `kernels/emu`: the same `.cu` kernels compiled as host C++, one fiber per CUDA thread
//!   with real barriers and shuffles (see `kernels/emu/README.md`). A wrong grid, argument
//!   order or parameter field is therefore as wrong there as on a GPU.
//!
//! The emulator keeps launch state in globals (grid and block dims, `__shared__` arrays), so
//! launches are serialised by a lock; each runs to completion before `launch` returns, which
//! is also what one in-order CUDA stream guarantees to the next launch.

use std::ffi::c_void;

use cudarc::driver::{LaunchArgs, LaunchConfig, PushKernelArg};

use super::buffer::{CudaSlice, Mem};
use super::device::Backing;
use super::params::KernelParams;
use super::{CudaDevice, CudaError, CudaResult, KernelModule};

/// One kernel argument, in the order of the kernel's signature.
pub enum KernelArg<'a> {
    /// A buffer the kernel only reads (`const T*`).
    In(&'a dyn BufferArg),
    /// A buffer the kernel writes (`T*`).
    Out(&'a mut dyn BufferArg),
    /// The parameter block, passed by value.
    Params(&'a dyn KernelParams),
}

/// A [`CudaSlice`] of any element type, as a kernel argument.
pub trait BufferArg {
    /// Adds a GPU buffer to a launch as read-only; `false` for host memory.
    fn push_read<'a>(&'a self, b: &mut LaunchArgs<'a>) -> bool;
    /// Adds a GPU buffer to a launch as written; `false` for host memory.
    fn push_write<'a>(&'a mut self, b: &mut LaunchArgs<'a>) -> bool;
    /// The address of an emulated-device buffer; `None` for GPU memory.
    fn host_ptr(&mut self) -> Option<*const c_void>;
    fn host_const_ptr(&self) -> Option<*const c_void>;
}

/// The device address an empty GPU buffer ([`Mem::Empty`]) passes: null, never dereferenced.
static NULL_DEVICE_PTR: u64 = 0;

impl<T> BufferArg for CudaSlice<T> {
    fn push_read<'a>(&'a self, b: &mut LaunchArgs<'a>) -> bool {
        match &self.mem {
            Mem::Driver(s) => {
                b.arg(s);
                true
            }
            Mem::Empty => {
                b.arg(&NULL_DEVICE_PTR);
                true
            }
            Mem::Host(_) => false,
        }
    }

    fn push_write<'a>(&'a mut self, b: &mut LaunchArgs<'a>) -> bool {
        match &mut self.mem {
            Mem::Driver(s) => {
                b.arg(s);
                true
            }
            Mem::Empty => {
                b.arg(&NULL_DEVICE_PTR);
                true
            }
            Mem::Host(_) => false,
        }
    }

    fn host_ptr(&mut self) -> Option<*const c_void> {
        match &mut self.mem {
            Mem::Host(h) => Some(h.mut_ptr().cast_const().cast()),
            Mem::Driver(_) | Mem::Empty => None,
        }
    }

    fn host_const_ptr(&self) -> Option<*const c_void> {
        match &self.mem {
            Mem::Host(h) => Some(h.ptr().cast()),
            Mem::Driver(_) | Mem::Empty => None,
        }
    }
}

fn wrong_memory(name: &str, i: usize) -> CudaError {
    CudaError::Invalid(format!(
        "{name}: argument {i} is a buffer of another device kind (GPU vs emulated)"
    ))
}

/// Launches kernel `name` of module `m` on `dev`'s stream with `cfg` and `args`.
///
/// # Safety
/// As `cuLaunchKernel`: `args` must match the kernel's signature in number, order and types,
/// and every index the kernel computes for this grid must lie inside the buffers given. Each
/// launcher states why that holds for its kernel next to its call.
pub unsafe fn launch(
    dev: &CudaDevice,
    m: KernelModule,
    name: &str,
    cfg: LaunchConfig,
    args: &mut [KernelArg<'_>],
) -> CudaResult<()> {
    match dev.backing() {
        Backing::Driver(d) => {
            let f = dev.function(m, name)?;
            let mut b = d.stream.launch_builder(&f);
            for (i, a) in args.iter_mut().enumerate() {
                let pushed = match a {
                    KernelArg::In(buf) => buf.push_read(&mut b),
                    KernelArg::Out(buf) => buf.push_write(&mut b),
                    KernelArg::Params(p) => {
                        p.push(&mut b);
                        true
                    }
                };
                if !pushed {
                    return Err(wrong_memory(name, i));
                }
            }
            // SAFETY: the caller's contract (see above) is cuLaunchKernel's.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
        Backing::Emulated => {
            // `addrs[i]` holds buffer i's address; params[i] points at it (or at the
            // parameter block), as in cuLaunchKernel's kernelParams. `addrs` is sized up front
            // so the pointers into it stay valid.
            let mut addrs: Vec<*const c_void> = vec![std::ptr::null(); args.len()];
            let mut params: Vec<*mut c_void> = Vec::with_capacity(args.len());
            for (i, a) in args.iter_mut().enumerate() {
                addrs[i] = match a {
                    KernelArg::In(buf) => buf.host_const_ptr(),
                    KernelArg::Out(buf) => buf.host_ptr(),
                    KernelArg::Params(_) => Some(std::ptr::null()),
                }
                .ok_or_else(|| wrong_memory(name, i))?;
            }
            for (i, a) in args.iter().enumerate() {
                params.push(match a {
                    KernelArg::Params(p) => p.as_ptr().cast_mut(),
                    _ => (&raw const addrs[i]).cast_mut().cast(),
                });
            }
            emulator::launch(name, cfg, &mut params)
        }
    }
}

/// The FFI to `kernels/emu` (linked by `build.rs` with the `cuda-emu` feature).
pub(crate) mod emulator {
    use std::ffi::{CString, c_void};

    use cudarc::driver::LaunchConfig;

    use crate::cuda::{CudaError, CudaResult};

    /// Whether this build has the emulator.
    pub const PRESENT: bool = cfg!(feature = "cuda-emu");

    #[cfg(feature = "cuda-emu")]
    unsafe extern "C" {
        /// Generated by `kernels/emu/gen_launch.py`: 0 on success, 1 for an unknown kernel
        /// name, 2 when `smem` exceeds the emulator's dynamic shared memory, 3 on a barrier
        /// deadlock.
        fn pmad_emu_launch(
            name: *const std::ffi::c_char,
            gx: u32,
            gy: u32,
            gz: u32,
            bx: u32,
            by: u32,
            bz: u32,
            smem: u32,
            params: *mut *mut c_void,
        ) -> i32;
        /// 1 when the emulator has a kernel of this name.
        fn pmad_emu_has_kernel(name: *const std::ffi::c_char) -> i32;
    }

    fn c_name(name: &str) -> CudaResult<CString> {
        CString::new(name).map_err(|_| CudaError::Invalid(format!("kernel name {name:?}")))
    }

    /// Runs kernel `name` to completion on the host.
    #[cfg(feature = "cuda-emu")]
    pub fn launch(name: &str, cfg: LaunchConfig, params: &mut [*mut c_void]) -> CudaResult<()> {
        /// The emulator's globals allow one launch at a time.
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let cname = c_name(name)?;
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        // What cuLaunchKernel answers with CUDA_ERROR_INVALID_VALUE: an empty grid or block,
        // more than 1024 threads per block, grid y or z above 65535, block z above 64.
        if g.0 * g.1 * g.2 == 0
            || b.0 * b.1 * b.2 == 0
            || b.0 * b.1 * b.2 > 1024
            || g.1 > 65535
            || g.2 > 65535
            || b.2 > 64
        {
            return Err(CudaError::Invalid(format!(
                "{name}: invalid launch grid {g:?} x block {b:?}"
            )));
        }
        let _one_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `params` holds one pointer per kernel argument, in the order of the
        // kernel's signature (the caller's `launch` contract), each to a live value.
        let rc = unsafe {
            pmad_emu_launch(
                cname.as_ptr(),
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                cfg.shared_mem_bytes,
                params.as_mut_ptr(),
            )
        };
        match rc {
            0 => Ok(()),
            1 => Err(CudaError::Invalid(format!(
                "emulator: no kernel named {name}"
            ))),
            2 => Err(CudaError::Invalid(format!(
                "{name}: {} bytes of dynamic shared memory exceed 48 KiB (a GPU's limit \
                 without an opt-in attribute)",
                cfg.shared_mem_bytes
            ))),
            3 => Err(CudaError::Invalid(format!(
                "{name}: the threads of a block deadlock on their barriers (some wait on a \
                 __syncthreads or __syncwarp the others never reach)"
            ))),
            rc => Err(CudaError::Invalid(format!(
                "{name}: emulator returned {rc}"
            ))),
        }
    }

    #[cfg(not(feature = "cuda-emu"))]
    pub fn launch(name: &str, _cfg: LaunchConfig, _params: &mut [*mut c_void]) -> CudaResult<()> {
        Err(CudaError::Unavailable(format!(
            "{name}: this pmad was built without the emulated device (feature `cuda-emu`)"
        )))
    }

    /// Whether the emulator knows kernel `name`.
    pub fn has_kernel(name: &str) -> CudaResult<bool> {
        let cname = c_name(name)?;
        #[cfg(feature = "cuda-emu")]
        {
            // SAFETY: a NUL-terminated string that outlives the call.
            Ok(unsafe { pmad_emu_has_kernel(cname.as_ptr()) } == 1)
        }
        #[cfg(not(feature = "cuda-emu"))]
        {
            drop(cname);
            Ok(false)
        }
    }
}
