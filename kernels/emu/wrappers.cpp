// ctypes entry points: w_<kernel>(grid.x, grid.y, grid.z, block.x, kernel args...). The
// k/*.cpp files are the kernels/*.cu sources after run.sh's few textual substitutions.
#include "k/attention.cpp"
#include "k/proto_nn.cpp"
#include "k/topk_mask.cpp"
#include "k/coupling.cpp"
#include "k/entropy.cpp"
#include "k/glue.cpp"
#define G unsigned gx, unsigned gy, unsigned gz, unsigned bx
#define L(k, ...) emu_launch(k, dim3{gx, gy, gz}, dim3{bx, 1, 1}, __VA_ARGS__)
typedef const float* cf; typedef float* mf;
extern "C" {
void w_attention_fwd_d64_f32(G, cf q, cf k, cf v, mf o, mf l, AttentionParams p) { L(attention_fwd_d64_f32, q, k, v, o, l, p); }
void w_attention_fwd_d128_f32(G, cf q, cf k, cf v, mf o, mf l, AttentionParams p) { L(attention_fwd_d128_f32, q, k, v, o, l, p); }
void w_attention_bwd_delta_f32(G, cf o, cf g, mf d, AttentionParams p) { L(attention_bwd_delta_f32, o, g, d, p); }
void w_attention_bwd_dq_d64_f32(G, cf q, cf k, cf v, cf g, cf l, cf d, mf dq, AttentionParams p) { L(attention_bwd_dq_d64_f32, q, k, v, g, l, d, dq, p); }
void w_attention_bwd_dq_d128_f32(G, cf q, cf k, cf v, cf g, cf l, cf d, mf dq, AttentionParams p) { L(attention_bwd_dq_d128_f32, q, k, v, g, l, d, dq, p); }
void w_attention_bwd_dkdv_d64_f32(G, cf q, cf k, cf v, cf g, cf l, cf d, mf dk, mf dv, AttentionParams p) { L(attention_bwd_dkdv_d64_f32, q, k, v, g, l, d, dk, dv, p); }
void w_attention_bwd_dkdv_d128_f32(G, cf q, cf k, cf v, cf g, cf l, cf d, mf dk, mf dv, AttentionParams p) { L(attention_bwd_dkdv_d128_f32, q, k, v, g, l, d, dk, dv, p); }
void w_proto_nn_f32(G, cf q, cf b, unsigned long long* best, ProtoNnParams p) { L(proto_nn_f32, q, b, best, p); }
void w_proto_nn_f16(G, cf q, const unsigned short* b, unsigned long long* best, ProtoNnParams p) { L(proto_nn_f16, q, b, best, p); }
void w_proto_nn_bf16(G, cf q, const unsigned short* b, unsigned long long* best, ProtoNnParams p) { L(proto_nn_bf16, q, b, best, p); }
void w_proto_nn_init_u64(G, unsigned long long* best, ProtoNnParams p) { L(proto_nn_init_u64, best, p); }
void w_proto_nn_finalize_u64(G, const unsigned long long* best, unsigned* idx, mf dist, ProtoNnParams p) { L(proto_nn_finalize_u64, best, idx, dist, p); }
void w_topk_mask_f32(G, cf s, mf m, TopkMaskParams p) { L(topk_mask_f32, s, m, p); }
void w_coupling_fwd_f32(G, cf x2, cf s, cf t, mf y, mf ld, CouplingParams p) { L(coupling_fwd_f32, x2, s, t, y, ld, p); }
void w_coupling_bwd_f32(G, cf x2, cf s, cf dy, cf dl, mf dx, mf ds, mf dt, CouplingParams p) { L(coupling_bwd_f32, x2, s, dy, dl, dx, ds, dt, p); }
void w_entropy_fwd_f32(G, cf x, const int* t, mf pr, mf lse, mf ent, mf ce, EntropyParams p) { L(entropy_fwd_f32, x, t, pr, lse, ent, ce, p); }
void w_layernorm_fwd_f32(G, cf x, cf g, cf b, mf y, mf m, mf r, LayerNormParams p) { L(layernorm_fwd_f32, x, g, b, y, m, r, p); }
void w_gelu_fwd_f32(G, cf x, mf y, GeluParams p) { L(gelu_fwd_f32, x, y, p); }
void w_bias_residual_add_f32(G, cf x, cf b, cf r, mf y, BiasResidualParams p) { L(bias_residual_add_f32, x, b, r, y, p); }
void w_dwconv2d_f32(G, cf x, cf w, cf b, mf y, DwConv2dParams p) { L(dwconv2d_f32, x, w, b, y, p); }
void w_resize_bilinear_f32(G, cf x, mf y, ResizeBilinearParams p) { L(resize_bilinear_f32, x, y, p); }
void w_blur_h_f32(G, cf x, cf t, mf y, BlurParams p) { L(blur_h_f32, x, t, y, p); }
void w_blur_v_f32(G, cf x, cf t, mf y, BlurParams p) { L(blur_v_f32, x, t, y, p); }
void w_mask_rows_f32(G, cf x, const int* m, cf t, mf y, RowSelectParams p) { L(mask_rows_f32, x, m, t, y, p); }
void w_gather_rows_f32(G, cf x, const int* i, mf y, RowSelectParams p) { L(gather_rows_f32, x, i, y, p); }
void w_im2col_f32(G, cf x, mf c, Im2colParams p) { L(im2col_f32, x, c, p); }
void w_bias_act_nchw_f32(G, cf x, cf b, cf r, mf y, BiasActParams p) { L(bias_act_nchw_f32, x, b, r, y, p); }
void w_avg_pool_f32(G, cf x, mf y, PoolParams p) { L(avg_pool_f32, x, y, p); }
void w_nchw_to_rows_f32(G, cf x, mf y, ToRowsParams p) { L(nchw_to_rows_f32, x, y, p); }
}
