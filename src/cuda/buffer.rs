//! [`CudaSlice`]: the CUDA backend's device buffer — memory of a real GPU (cudarc's
//! `CudaSlice`) or, on the emulated device (feature `cuda-emu`, see [`super::launch`]), an
//! allocation in host memory that the emulated kernels read and write through plain pointers.
//!
//! Launchers, the ViT and the backbone only ever see this type; which memory it holds is decided
//! once, by the [`super::CudaDevice`] that allocated it. A buffer is never used with another
//! device kind than the one that made it (one shared device per process).

use bytemuck::{Pod, Zeroable};
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// The element types kernels take: plain old data on both devices.
pub trait DeviceElem: DeviceRepr + ValidAsZeroBits + Pod {}
impl DeviceElem for f32 {}
impl DeviceElem for i32 {}
impl DeviceElem for u32 {}
impl DeviceElem for u64 {}
impl DeviceElem for u16 {}

/// A buffer of `T` on the CUDA device.
#[derive(Debug)]
pub struct CudaSlice<T> {
    pub(crate) mem: Mem<T>,
}

/// Where a [`CudaSlice`]'s elements live.
#[derive(Debug)]
pub(crate) enum Mem<T> {
    /// On a GPU, through the driver.
    Driver(cudarc::driver::CudaSlice<T>),
    /// In host memory, for the emulated device.
    Host(HostMem<T>),
    /// No elements, on a GPU: nothing is allocated (`cuMemAlloc` of 0 bytes is an error, and
    /// some drivers' pool allocators "succeed" without writing a pointer). A kernel given one
    /// gets a null pointer, which it never dereferences (launchers return before launching
    /// work on empty sizes).
    Empty,
}

impl<T> CudaSlice<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.mem {
            Mem::Driver(s) => s.len(),
            Mem::Host(h) => h.len,
            Mem::Empty => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 256 bytes, 256-aligned: the unit of host allocations, so that a host buffer is aligned like
/// `cuMemAlloc`'s (kernels read shared and global memory as `float4` and 64-bit words).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(256))]
pub(crate) struct Chunk([u8; 256]);

// SAFETY: a plain byte array (no padding: size 256 = alignment), every bit pattern valid.
unsafe impl Zeroable for Chunk {}
// SAFETY: as above; `Copy` and `'static`.
unsafe impl Pod for Chunk {}

/// `len` elements of `T` in zeroed, 256-byte aligned host memory.
#[derive(Debug)]
pub(crate) struct HostMem<T> {
    chunks: Vec<Chunk>,
    len: usize,
    _elem: std::marker::PhantomData<T>,
}

impl<T: Pod> HostMem<T> {
    pub(crate) fn zeros(len: usize) -> HostMem<T> {
        let bytes = len * std::mem::size_of::<T>();
        HostMem {
            chunks: vec![Chunk([0; 256]); bytes.div_ceil(256)],
            len,
            _elem: std::marker::PhantomData,
        }
    }

    /// Every byte `0xFF` (NaN in f32, `-1` / the maximum in integers): what the emulated device
    /// gives for uninitialised memory, so that an output element a kernel fails to write shows
    /// up in a comparison instead of passing as a zero.
    pub(crate) fn poisoned(len: usize) -> HostMem<T> {
        let mut h = HostMem::zeros(len);
        bytemuck::cast_slice_mut::<Chunk, u8>(&mut h.chunks).fill(0xFF);
        h
    }

    pub(crate) fn from_slice(v: &[T]) -> HostMem<T> {
        let mut h = HostMem::zeros(v.len());
        h.as_mut_slice().copy_from_slice(v);
        h
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        &bytemuck::cast_slice(&self.chunks)[..self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.chunks)[..self.len]
    }
}

impl<T> HostMem<T> {
    /// The address the emulated kernels get (never dereferenced when `len == 0`).
    pub(crate) fn ptr(&self) -> *const u8 {
        self.chunks.as_ptr().cast()
    }

    pub(crate) fn mut_ptr(&mut self) -> *mut u8 {
        self.chunks.as_mut_ptr().cast()
    }
}
