//! Kernel parameter blocks: `#[repr(C)]` mirrors of the structs in `kernels/params.cuh`, same
//! names, same field order, only 4-byte `i32`/`f32` fields (no padding). Each is passed by value
//! as the last kernel argument; device pointers travel as separate arguments. Sizes are
//! asserted on both sides.

use std::ffi::c_void;

use cudarc::driver::{DeviceRepr, LaunchArgs, PushKernelArg};

/// A parameter block as a kernel argument ([`super::launch::KernelArg::Params`]), on a GPU
/// (copied into the launch by the driver) or on the emulated device (read through its address).
pub trait KernelParams {
    /// Adds the block to a GPU launch.
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>);
    /// The block's address, for the emulator's `void**` arguments.
    fn as_ptr(&self) -> *const c_void;
}

macro_rules! device_repr {
    ($($t:ty = $size:expr),* $(,)?) => {$(
        // SAFETY: `#[repr(C)]`, only `i32`/`f32` fields (no padding, no pointers, every bit
        // pattern valid), laid out exactly like the struct of the same name in
        // kernels/params.cuh; the size is asserted here and by a static_assert there.
        unsafe impl DeviceRepr for $t {}
        const _: () = assert!(std::mem::size_of::<$t>() == $size);
        impl KernelParams for $t {
            fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
                b.arg(self);
            }
            fn as_ptr(&self) -> *const c_void {
                (self as *const $t).cast()
            }
        }
    )*};
}

/// `AttentionParams` — every kernel of attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttentionParams {
    pub batch: i32,
    pub seq: i32,
    pub heads: i32,
    pub head_dim: i32,
    pub scale: f32,
}

/// `ProtoNnParams` — proto_nn.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtoNnParams {
    pub num_queries: i32,
    pub num_protos: i32,
    pub dim: i32,
    pub tiles_per_block: i32,
}

/// `TopkMaskParams` — topk_mask.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopkMaskParams {
    pub rows: i32,
    pub n: i32,
    pub k: i32,
}

/// `CouplingParams` — coupling.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CouplingParams {
    pub rows: i32,
    pub cols: i32,
    pub alpha: f32,
}

/// `EntropyParams` — entropy.cu. Flags are 0/1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntropyParams {
    pub rows: i32,
    pub vocab: i32,
    pub has_targets: i32,
    pub write_probs: i32,
}

/// `LayerNormParams` — glue.cu `layernorm_fwd_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerNormParams {
    pub rows: i32,
    pub cols: i32,
    pub eps: f32,
}

/// `GeluParams` — glue.cu `gelu_fwd_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeluParams {
    pub n: i32,
}

/// `ProtoNnTcParams` — proto_nn.cu `proto_nn_sqnorm_f32`, `proto_nn_rerank_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtoNnTcParams {
    pub rows: i32,
    pub num_protos: i32,
    pub dim: i32,
    pub q_offset: i32,
}

/// `ConvertParams` — glue.cu `f32_to_bf16`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvertParams {
    pub n: i32,
    pub offset: i32,
}

/// `BiasResidualParams` — glue.cu `bias_residual_add_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BiasResidualParams {
    pub rows: i32,
    pub cols: i32,
    pub has_residual: i32,
}

/// `DwConv2dParams` — glue.cu `dwconv2d_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DwConv2dParams {
    pub batch: i32,
    pub channels: i32,
    pub in_h: i32,
    pub in_w: i32,
    pub out_h: i32,
    pub out_w: i32,
    pub k_h: i32,
    pub k_w: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub pad_top: i32,
    pub pad_bottom: i32,
    pub pad_left: i32,
    pub pad_right: i32,
    pub relu6: i32,
}

/// `ResizeBilinearParams` — glue.cu `resize_bilinear_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResizeBilinearParams {
    pub planes: i32,
    pub in_h: i32,
    pub in_w: i32,
    pub out_h: i32,
    pub out_w: i32,
    pub scale_h: f32,
    pub scale_w: f32,
}

/// `BlurParams` — glue.cu `blur_h_f32` / `blur_v_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlurParams {
    pub planes: i32,
    pub h: i32,
    pub w: i32,
    pub radius: i32,
}

/// `RowSelectParams` — glue.cu `mask_rows_f32` / `gather_rows_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowSelectParams {
    pub rows: i32,
    pub cols: i32,
    pub src_rows: i32,
}

/// `Im2colParams` — glue.cu `im2col_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Im2colParams {
    pub batch: i32,
    pub channels: i32,
    pub in_h: i32,
    pub in_w: i32,
    pub out_h: i32,
    pub out_w: i32,
    pub k_h: i32,
    pub k_w: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub pad_top: i32,
    pub pad_left: i32,
}

/// `BiasActParams` — glue.cu `bias_act_nchw_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BiasActParams {
    pub batch: i32,
    pub channels: i32,
    pub plane: i32,
    pub relu6: i32,
    pub has_residual: i32,
}

/// `PoolParams` — glue.cu `avg_pool_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolParams {
    pub planes: i32,
    pub h: i32,
    pub w: i32,
    pub k: i32,
}

/// `ToRowsParams` — glue.cu `nchw_to_rows_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToRowsParams {
    pub batch: i32,
    pub channels: i32,
    pub plane: i32,
    pub row_width: i32,
    pub col_offset: i32,
}

/// `ScoreParams` — score.cu (each kernel reads the fields its comment names).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScoreParams {
    pub images: i32,
    pub n: i32,
    pub grid: i32,
    pub vgrid: i32,
    pub dim: i32,
    pub k: i32,
    pub flag: i32,
}

device_repr! {
    AttentionParams = 20,
    ProtoNnParams = 16,
    TopkMaskParams = 12,
    CouplingParams = 12,
    EntropyParams = 16,
    LayerNormParams = 12,
    GeluParams = 4,
    ConvertParams = 8,
    ProtoNnTcParams = 16,
    BiasResidualParams = 12,
    DwConv2dParams = 60,
    ResizeBilinearParams = 28,
    BlurParams = 16,
    RowSelectParams = 12,
    Im2colParams = 48,
    BiasActParams = 20,
    PoolParams = 16,
    ToRowsParams = 20,
    ScoreParams = 28,
}
