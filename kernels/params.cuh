// params.cuh — the parameter block of every kernel, mirrored field for field by the
// `#[repr(C)]` structs of src/cuda/params.rs (same names in CamelCase, same order).
//
// Rules that keep the two sides in sync:
//   * fields are only 4-byte `int` / `float` (no padding, no pointers, no bool);
//   * device pointers are NOT in the structs: they are passed as separate kernel arguments
//     ahead of the struct, so cudarc can track reads/writes of each buffer;
//   * each struct's size is asserted here and in Rust (`const _: () = assert!(..)`).
// A kernel takes exactly one of these, by value, as its last argument. Kernels of one family
// that need the same numbers share the family's struct (e.g. all attention kernels).
#pragma once

// attention.cu: attention_fwd_*, attention_bwd_delta_f32, attention_bwd_dq_*, attention_bwd_dkdv_*
struct AttentionParams {
    int batch;     // B
    int seq;       // N (tokens)
    int heads;     // H; rows of q/k/v/o are H*head_dim wide
    int head_dim;  // D: <= 64 for the *_d64 kernels, <= 128 for *_d128
    float scale;   // softmax scale, normally 1/sqrt(D)
};
static_assert(sizeof(AttentionParams) == 20, "AttentionParams layout");

// proto_nn.cu: proto_nn_init_u64, proto_nn_{f32,f16,bf16}, proto_nn_finalize_u64
struct ProtoNnParams {
    int num_queries;      // Q
    int num_protos;       // P
    int dim;              // D
    int tiles_per_block;  // prototype tiles (of PROTO_TILE) each block scans
};
static_assert(sizeof(ProtoNnParams) == 16, "ProtoNnParams layout");

// proto_nn.cu: proto_nn_sqnorm_f32, proto_nn_rerank_f32 (the bf16 tensor-core search)
struct ProtoNnTcParams {
    int rows;        // queries in this chunk (proto_nn_sqnorm_f32: rows of the bank)
    int num_protos;  // P
    int dim;         // D
    int q_offset;    // first query of the chunk
};
static_assert(sizeof(ProtoNnTcParams) == 16, "ProtoNnTcParams layout");

// topk_mask.cu: topk_mask_f32
struct TopkMaskParams {
    int rows;  // images
    int n;     // scores per image (196, 784, ...)
    int k;     // how many to select per row, 0 <= k <= n
};
static_assert(sizeof(TopkMaskParams) == 12, "TopkMaskParams layout");

// coupling.cu: coupling_fwd_f32, coupling_bwd_f32
struct CouplingParams {
    int rows;     // R
    int cols;     // C (the transformed half of the features)
    float alpha;  // soft-clamp bound (1.9)
};
static_assert(sizeof(CouplingParams) == 12, "CouplingParams layout");

// entropy.cu: entropy_fwd_f32
struct EntropyParams {
    int rows;         // R
    int vocab;        // V
    int has_targets;  // 1: read targets[R] and write the cross-entropy
    int write_probs;  // 1: write softmax probabilities [R, V]
};
static_assert(sizeof(EntropyParams) == 16, "EntropyParams layout");

// glue.cu: layernorm_fwd_f32
struct LayerNormParams {
    int rows;
    int cols;
    float eps;
};
static_assert(sizeof(LayerNormParams) == 12, "LayerNormParams layout");

// glue.cu: gelu_fwd_f32
struct GeluParams {
    int n;  // elements
};
static_assert(sizeof(GeluParams) == 4, "GeluParams layout");

// glue.cu: f32_to_bf16
struct ConvertParams {
    int n;       // elements converted
    int offset;  // first element of x read
};
static_assert(sizeof(ConvertParams) == 8, "ConvertParams layout");

// glue.cu: bias_residual_add_f32
struct BiasResidualParams {
    int rows;
    int cols;          // bias has `cols` entries
    int has_residual;  // 0: y = x + bias
};
static_assert(sizeof(BiasResidualParams) == 12, "BiasResidualParams layout");

// glue.cu: dwconv2d_f32
struct DwConv2dParams {
    int batch, channels;
    int in_h, in_w;
    int out_h, out_w;  // (in + pad_a + pad_b - k) / stride + 1, computed on the host
    int k_h, k_w;
    int stride_h, stride_w;
    int pad_top, pad_bottom, pad_left, pad_right;
    int relu6;  // 1: clamp to [0, 6] after the bias
};
static_assert(sizeof(DwConv2dParams) == 60, "DwConv2dParams layout");

// glue.cu: resize_bilinear_f32
struct ResizeBilinearParams {
    int planes;  // N*C
    int in_h, in_w;
    int out_h, out_w;
    float scale_h, scale_w;  // source/destination ratio, in/out (torch's 1/scale_factor)
};
static_assert(sizeof(ResizeBilinearParams) == 28, "ResizeBilinearParams layout");

// glue.cu: blur_h_f32, blur_v_f32
struct BlurParams {
    int planes;  // independent HxW images
    int h, w;
    int radius;  // taps = 2*radius + 1
};
static_assert(sizeof(BlurParams) == 16, "BlurParams layout");

// glue.cu: mask_rows_f32, gather_rows_f32
struct RowSelectParams {
    int rows;      // output rows
    int cols;
    int src_rows;  // rows of the input (gather bounds)
};
static_assert(sizeof(RowSelectParams) == 12, "RowSelectParams layout");

// glue.cu: im2col_f32
struct Im2colParams {
    int batch;
    int channels;
    int in_h;
    int in_w;
    int out_h;
    int out_w;
    int k_h;
    int k_w;
    int stride_h;
    int stride_w;
    int pad_top;   // (bottom/right padding is implied by out_h/out_w)
    int pad_left;
};
static_assert(sizeof(Im2colParams) == 48, "Im2colParams layout");

// glue.cu: bias_act_nchw_f32
struct BiasActParams {
    int batch;
    int channels;
    int plane;         // H*W
    int relu6;         // 1: min(max(., 0), 6) after the bias
    int has_residual;  // 1: + residual after the activation
};
static_assert(sizeof(BiasActParams) == 20, "BiasActParams layout");

// glue.cu: avg_pool_f32
struct PoolParams {
    int planes;
    int h;
    int w;
    int k;  // odd window
};
static_assert(sizeof(PoolParams) == 16, "PoolParams layout");

// glue.cu: nchw_to_rows_f32
struct ToRowsParams {
    int batch;
    int channels;
    int plane;       // H*W
    int row_width;   // columns of the output rows (all taps' channels)
    int col_offset;  // first column of this tap
};
static_assert(sizeof(ToRowsParams) == 20, "ToRowsParams layout");

// score.cu: every kernel of the scoring chain (each reads the fields its comment names)
struct ScoreParams {
    int images;  // B
    int n;       // values per image (or in all, for sqrt/scatter)
    int grid;    // feature grid side
    int vgrid;   // ViT grid side
    int dim;     // feature dim (pool_cells); flag slots per image (nonfinite)
    int k;       // top-k count; the scatter target's length; the flag slot (nonfinite)
    int flag;    // upsample_product: the abnormality is given
};
static_assert(sizeof(ScoreParams) == 28, "ScoreParams layout");
