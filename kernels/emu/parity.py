"""Host-emulated kernels (emu.so from run.sh) vs numpy/scipy references.

Launch grids mirror src/cuda/*.rs; tolerances mirror tests/cuda_parity.rs. The blur is checked
against scipy.ndimage.gaussian_filter(mode='reflect') itself, the resize against a re-derivation
of ATen's upsample_bilinear2d index rules. Exit status 1 on any mismatch.
"""
import ctypes as C, math, sys

import numpy as np
from scipy import ndimage, special
np.seterr(invalid='ignore')  # -inf * 0 in the entropy reference
lib = C.CDLL(sys.argv[1])
def S(name, fields):
    return type(name, (C.Structure,), {'_fields_': [(f, C.c_float if f in ('scale','alpha','eps','scale_h','scale_w') else C.c_int) for f in fields]})
AttP = S('A', ['batch','seq','heads','head_dim','scale'])
PnnP = S('P', ['num_queries','num_protos','dim','tiles_per_block'])
TopP = S('T', ['rows','n','k'])
CplP = S('Cp', ['rows','cols','alpha'])
EntP = S('E', ['rows','vocab','has_targets','write_probs'])
LnP = S('Ln', ['rows','cols','eps'])
GeP = S('Ge', ['n'])
BrP = S('Br', ['rows','cols','has_residual'])
DwP = S('Dw', ['batch','channels','in_h','in_w','out_h','out_w','k_h','k_w','stride_h','stride_w','pad_top','pad_bottom','pad_left','pad_right','relu6'])
RsP = S('Rs', ['planes','in_h','in_w','out_h','out_w','scale_h','scale_w'])
BlP = S('Bl', ['planes','h','w','radius'])
RowP = S('Row', ['rows','cols','src_rows'])
I2cP = S('I2c', ['batch','channels','in_h','in_w','out_h','out_w','k_h','k_w','stride_h','stride_w','pad_top','pad_left'])
BaP = S('Ba', ['batch','channels','plane','relu6','has_residual'])
PoP = S('Po', ['planes','h','w','k'])
TrP = S('Tr', ['batch','channels','plane','row_width','col_offset'])
assert C.sizeof(AttP)==20 and C.sizeof(DwP)==60 and C.sizeof(RsP)==28

lib.pmad_emu_launch.restype = C.c_int
lib.pmad_emu_launch.argtypes = [C.c_char_p] + [C.c_uint] * 7 + [C.POINTER(C.c_void_p)]
def launch(name, grid, block, *args, smem=0):
    """Launches kernel `name` the way the CUDA driver does (cuLaunchKernel): params[i] points
    at the i-th argument — at a variable holding the buffer's address for an array, at the
    struct itself for a parameter block."""
    keep = []
    params = (C.c_void_p * len(args))()
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            a = C.c_void_p(a.ctypes.data)
        keep.append(a)
        params[i] = C.addressof(a)
    rc = lib.pmad_emu_launch(name.encode(), grid[0], grid[1], grid[2], block, 1, 1, smem, params)
    if rc != 0:
        raise RuntimeError(f"pmad_emu_launch({name}) returned {rc}")

FAILS = []
def compare(name, got, want, atol, rtol, nmse_max=1e-9, exact_nonfinite=True):
    got = np.asarray(got, np.float64).ravel(); want = np.asarray(want, np.float64).ravel()
    fin = np.isfinite(want)
    bad_nf = (~fin) & ~((np.isnan(want) & np.isnan(got)) | (got == want))
    err = np.where(fin, np.abs(got - want), 0)
    err = np.where(fin & ~np.isfinite(got), np.inf, err)
    lim = atol + rtol * np.abs(np.where(fin, want, 0))
    excess = err - lim
    fails = int((excess > 0).sum() + bad_nf.sum())
    w = int(np.argmax(excess)) if len(excess) else 0
    den = (want[fin] ** 2).sum()
    nmse = ((got[fin] - want[fin]) ** 2).sum() / den if den > 0 else ((got[fin] - want[fin]) ** 2).sum()
    ok = fails == 0 and nmse <= nmse_max
    print(f"{'ok ' if ok else 'BAD'} {name}: n={len(got)} max|err|={err.max() if len(err) else 0:.3e} nmse={nmse:.2e} worst[{w}] got={got[w] if len(got) else 0:.6g} ref={want[w] if len(got) else 0:.6g} fails={fails}")
    if not ok: FAILS.append(name)

rng = np.random.default_rng(1234)
f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
cdiv = lambda a, b: (a + b - 1) // b

# ---------------------------------------------------------------- attention
def attn_ref(q, k, v, g, B, N, H, D, scale):
    q, k, v, g = [x.astype(np.float64).reshape(B, N, H, D).transpose(0, 2, 1, 3) for x in (q, k, v, g)]
    s = scale * q @ k.transpose(0, 1, 3, 2)
    m = s.max(-1, keepdims=True); z = np.exp(s - m).sum(-1, keepdims=True); lse = m + np.log(z)
    p = np.exp(s - lse); o = p @ v
    back = lambda x: x.transpose(0, 2, 1, 3).reshape(B, N, H * D)
    return back(o), lse[..., 0]

for (B, N, H, D) in [(2, 37, 3, 64), (1, 196, 2, 64), (2, 70, 2, 40), (1, 1, 1, 64), (2, 50, 2, 128), (1, 33, 1, 100)]:
    q, k, v, g = [f32(rng.standard_normal((B, N, H * D))) for _ in range(4)]
    scale = 1 / math.sqrt(D)
    p = AttP(B, N, H, D, scale)
    o = np.zeros_like(q); lse = np.zeros((B, H, N), np.float32)
    d64 = D <= 64
    rows = 64 if d64 else 32
    launch('attention_fwd_d64_f32' if d64 else 'attention_fwd_d128_f32', (cdiv(N, rows), H, B), 128, q, k, v, o, lse, p)
    o_r, lse_r = attn_ref(q, k, v, g, B, N, H, D, scale)
    tag = f"attention B{B} N{N} H{H} D{D}"
    compare(tag + " o", o, o_r, 2e-5, 1e-4); compare(tag + " lse", lse, lse_r, 2e-5, 1e-4)

# attention on tensor cores (bf16 operands, f32 accumulation; D <= 64). Against the reference
# on bf16-rounded q, k, v the only other rounding is P's (<= 2^-9 relative per weight): tight.
# Against the f32 reference: bf16's error on every operand.
def bf16_round(a):
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)
for (B, N, H, D) in [(2, 37, 3, 64), (1, 196, 2, 64), (2, 70, 2, 40), (1, 1, 1, 64), (1, 130, 1, 16)]:
    q, k, v, g = [f32(rng.standard_normal((B, N, H * D))) for _ in range(4)]
    scale = 1 / math.sqrt(D)
    o = np.full_like(q, np.nan)
    launch('attention_fwd_tc_d64_bf16', (cdiv(N, 64), H, B), 128, q, k, v, o, AttP(B, N, H, D, scale))
    tag = f"attention_tc B{B} N{N} H{H} D{D}"
    o_b, _ = attn_ref(bf16_round(q), bf16_round(k), bf16_round(v), g, B, N, H, D, scale)
    compare(tag + " o vs bf16-rounded inputs", o, o_b, 2e-3, 1e-2, nmse_max=1e-5)
    o_r, _ = attn_ref(q, k, v, g, B, N, H, D, scale)
    compare(tag + " o vs f32", o, o_r, 1e-2, 2e-2, nmse_max=1e-4)

# ---------------------------------------------------------------- proto_nn
def proto(qs, bank_arr, kind, Q, P, D, sm=132):
    grid_x = cdiv(Q, 128); p_tiles = max(cdiv(P, 128), 1)
    chunks = min(max(min(cdiv(8 * sm, grid_x), p_tiles), 1), 65535)
    tpb = cdiv(p_tiles, chunks); chunks = cdiv(p_tiles, tpb)
    prm = PnnP(Q, P, D, tpb)
    best = np.zeros(Q, np.uint64)
    launch('proto_nn_init_u64', (cdiv(Q, 256), 1, 1), 256, best, prm)
    if P > 0: launch('proto_nn_' + kind, (grid_x, chunks, 1), 256, qs, bank_arr, best, prm)
    idx = np.zeros(Q, np.uint32); dist = np.zeros(Q, np.float32)
    launch('proto_nn_finalize_u64', (cdiv(Q, 256), 1, 1), 256, best, idx, dist, prm)
    return idx, dist, tpb, chunks

for (Q, P, D, sm) in [(300, 1000, 152, 132), (129, 257, 37, 132), (5, 3, 1, 132), (700, 3000, 20, 4)]:
    qs = f32(rng.standard_normal((Q, D))); bank = f32(rng.standard_normal((P, D)))
    for kind in ('f32',):
        arr = bank; deq = bank.astype(np.float64)
        idx, dist, tpb, chunks = proto(qs, arr, kind, Q, P, D, sm)
        dd = ((qs.astype(np.float64)[:, None, :] - deq[None]) ** 2).sum(-1)
        ref_i = dd.argmin(1); ref_d = dd.min(1)
        mism = np.nonzero(idx != ref_i)[0]
        near = all(dd[i, idx[i]] <= ref_d[i] + 1e-5 + 1e-5 * ref_d[i] for i in mism)
        print(f"{'ok ' if near else 'BAD'} proto_nn {kind} Q{Q} P{P} D{D} tiles/block {tpb} chunks {chunks}: {len(mism)} index diffs (near ties)")
        if not near: FAILS.append('proto idx')
        compare(f"proto_nn {kind} Q{Q} P{P} D{D} dist", dist, ref_d, 1e-4, 1e-5)
# ties
P, D = 700, 45
bank = f32(rng.standard_normal((P, D))); bank[600:700] = bank[0:100]
picks = rng.integers(0, 100, 150); qs = f32(bank[picks])
idx, dist, _, _ = proto(qs, bank, 'f32', 150, P, D)
ok = (idx == picks).all() and (dist == 0).all()
print(('ok ' if ok else 'BAD') + ' proto_nn ties'); ok or FAILS.append('ties')

# ---------------------------------------------------------------- topk
def round_half_away(x): return math.floor(x + 0.5)
for (R, n, ratio) in [(5, 196, .16), (3, 784, .48), (4, 196, 0.0), (2, 196, 1.0), (3, 37, .5)]:
    k = min(n, max(0, round_half_away(ratio * n)))
    s = f32(np.round(rng.uniform(-1, 1, (R, n)) * 8) / 8)
    s.ravel()[::29] = np.nan; s.ravel()[3::31] = -0.0
    m = np.zeros(s.shape, np.int32)  # int flags
    launch('topk_mask_f32', (R, 1, 1), 256, s, m, TopP(R, n, k), smem=n * 8)  # as src/cuda/topk_mask.rs
    want = np.zeros_like(s)
    for r in range(R):
        order = sorted(range(n), key=lambda i: (math.isnan(s[r, i]), -s[r, i] if not math.isnan(s[r, i]) else 0, i))
        want[r, order[:k]] = 1
    compare(f"topk R{R} n{n} k{k}", m.astype(np.float32), want, 0, 0, 0)
    assert (m.sum(1) == k).all()

# ---------------------------------------------------------------- coupling
for (R, Cc) in [(77, 136), (9, 37), (1, 1)]:
    x2, t, dy, = [f32(rng.standard_normal((R, Cc))) for _ in range(3)]; sr = f32(3 * rng.standard_normal((R, Cc))); dl = f32(rng.standard_normal(R))
    a = 1.9; u = sr.astype(np.float64) / a; s = 2 * a / np.pi * np.arctan(u); e = np.exp(s)
    y = np.zeros_like(x2); ld = np.zeros(R, np.float32)
    prm = CplP(R, Cc, a)
    launch('coupling_fwd_f32', (cdiv(R, 8), 1, 1), 256, x2, sr, t, y, ld, prm)
    compare(f"coupling fwd y R{R} C{Cc}", y, x2 * e + t, 1e-5, 1e-5); compare("coupling logdet", ld, s.sum(1), 1e-4, 1e-5)
    dx = np.zeros_like(x2); ds = np.zeros_like(x2); dt = np.zeros_like(x2)
    launch('coupling_bwd_f32', (cdiv(R, 8), 1, 1), 256, x2, sr, dy, dl, dx, ds, dt, prm)
    compare("coupling dx2", dx, dy * e, 1e-5, 1e-5); compare("coupling dt", dt, dy, 0, 0, 0)
    compare("coupling ds_raw", ds, (dy * x2 * e + dl[:, None]) * (2 / np.pi) / (1 + u * u), 1e-5, 1e-5)
    # finite-difference check of the analytic backward (f64 reference of the forward)
    def fwd64(sr_):
        s_ = 2 * a / np.pi * np.arctan(sr_ / a); return (dy * (x2 * np.exp(s_) + t)).sum() + (dl * s_.sum(1)).sum()
    i, j = R // 2, Cc // 2; h = 1e-6; sp = sr.astype(np.float64).copy(); sm_ = sp.copy(); sp[i, j] += h; sm_[i, j] -= h
    fd = (fwd64(sp) - fwd64(sm_)) / (2 * h)
    compare("coupling ds_raw finite-diff", [ds[i, j]], [fd], 1e-4, 1e-4)

# ---------------------------------------------------------------- entropy
for (R, V) in [(9, 8192), (13, 1000), (4, 37), (3, 1)]:
    x = f32(3 * rng.standard_normal((R, V)))
    if V > 2: x[0, 1] = -np.inf; x[1] += 1e4
    tg = np.array([-1 if r % 4 == 3 else rng.integers(0, V) for r in range(R)], np.int32)
    pr = np.zeros_like(x); lse = np.zeros(R, np.float32); ent = np.zeros(R, np.float32); ce = np.zeros(R, np.float32)
    launch('entropy_fwd_f32', (R, 1, 1), 256, x, tg, pr, lse, ent, ce, EntP(R, V, 1, 1))
    xd = x.astype(np.float64); m = xd.max(1, keepdims=True); lse_r = (m + np.log(np.exp(xd - m).sum(1, keepdims=True)))[:, 0]
    p = np.exp(xd - lse_r[:, None]); ent_r = -(np.where(p > 0, p * (xd - lse_r[:, None]), 0)).sum(1)
    ce_r = np.array([lse_r[r] - xd[r, tg[r]] if tg[r] >= 0 else 0 for r in range(R)])
    tag = f"entropy R{R} V{V}"
    compare(tag + " lse", lse, lse_r, 2e-5, 1e-6); compare(tag + " entropy", ent, ent_r, 1e-4, 2e-5)
    compare(tag + " ce", ce, ce_r, 1e-4, 1e-6); compare(tag + " probs", pr, p, 1e-6, 1e-4)

# ---------------------------------------------------------------- glue
for (R, Cc) in [(33, 768), (10, 272), (3, 5)]:
    x = f32(2 * rng.standard_normal((R, Cc)) + 3); ga = f32(rng.standard_normal(Cc)); be = f32(rng.standard_normal(Cc))
    y = np.zeros_like(x); mu = np.zeros(R, np.float32); rs = np.zeros(R, np.float32)
    launch('layernorm_fwd_f32', (cdiv(R, 8), 1, 1), 256, x, ga, be, y, mu, rs, LnP(R, Cc, 1e-6))
    xd = x.astype(np.float64); mr = xd.mean(1); vr = ((xd - mr[:, None]) ** 2).mean(1); rr = 1 / np.sqrt(vr + 1e-6)
    compare(f"layernorm R{R} C{Cc}", y, (xd - mr[:, None]) * rr[:, None] * ga + be, 2e-5, 1e-5)
    compare("layernorm mean", mu, mr, 2e-5, 1e-5); compare("layernorm rstd", rs, rr, 2e-5, 1e-5)

x = f32(rng.uniform(-6, 6, 10007)); y = np.zeros_like(x)
launch('gelu_fwd_f32', (min(cdiv(10007, 256), 32 * 132), 1, 1), 256, x, y, GeP(10007))
compare("gelu", y, 0.5 * x.astype(np.float64) * (1 + special.erf(x.astype(np.float64) / np.sqrt(2))), 1e-5, 1e-5)
# grid-stride with a small grid
y2 = np.zeros_like(x); launch('gelu_fwd_f32', (3, 1, 1), 256, x, y2, GeP(10007)); compare("gelu small grid", y2, y, 0, 0, 0)

R, Cc = 31, 97
x = f32(rng.standard_normal((R, Cc))); b = f32(rng.standard_normal(Cc)); r = f32(rng.standard_normal((R, Cc)))
y = np.zeros_like(x); launch('bias_residual_add_f32', (cdiv(R * Cc, 256), 1, 1), 256, x, b, r, y, BrP(R, Cc, 1)); compare("bias+res", y, x.astype(np.float64) + b + r, 1e-6, 1e-6)
y = np.zeros_like(x); launch('bias_residual_add_f32', (2, 1, 1), 256, x, b, x, y, BrP(R, Cc, 0)); compare("bias", y, x.astype(np.float64) + b, 1e-6, 1e-6)

def dw_ref(x, w, b, N, Cn, H, W, kh, kw, sh, sw, pad, relu6):
    t, bo, l, rr = pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (t, bo), (l, rr)))
    OH = (H + t + bo - kh) // sh + 1; OW = (W + l + rr - kw) // sw + 1
    y = np.zeros((N, Cn, OH, OW))
    for a in range(kh):
        for c in range(kw):
            y += xp[:, :, a:a + sh * (OH - 1) + 1:sh, c:c + sw * (OW - 1) + 1:sw] * w[None, :, a, c, None, None]
    y += b[None, :, None, None]
    return np.clip(y, 0, 6) if relu6 else y, OH, OW
for (N, Cn, H, W, kh, kw, sh, sw, pad, relu6) in [(2, 5, 17, 13, 3, 3, 1, 1, (1, 1, 1, 1), 1), (1, 7, 28, 23, 5, 5, 2, 2, (1, 2, 1, 2), 0), (3, 4, 9, 10, 3, 3, 2, 2, (0, 1, 0, 1), 1)]:
    x = f32(2 * rng.standard_normal((N, Cn, H, W))); w = f32(rng.standard_normal((Cn, kh, kw))); b = f32(rng.standard_normal(Cn))
    want, OH, OW = dw_ref(x, w, b, N, Cn, H, W, kh, kw, sh, sw, pad, relu6)
    y = np.zeros((N, Cn, OH, OW), np.float32)
    launch('dwconv2d_f32', (min(cdiv(y.size, 256), 32 * 132), 1, 1), 256, x, w, b, y, DwP(N, Cn, H, W, OH, OW, kh, kw, sh, sw, *pad, relu6))
    compare(f"dwconv k{kh} s{sh} pad{pad}", y, want, 1e-5, 1e-5)

def torch_bilinear(x, OH, OW):  # independent re-derivation of ATen's upsample_bilinear2d (align_corners=False)
    P, IH, IW = x.shape
    def idx(o, insz, outsz):
        sc = np.float32(insz) / np.float32(outsz)
        src = np.maximum(np.float32(sc) * (np.arange(outsz, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0).astype(np.float32)
        i0 = src.astype(np.int64); lam = (src - i0).astype(np.float64); i1 = np.minimum(i0 + 1, insz - 1)
        return i0, i1, lam
    y0, y1, ly = idx(None, IH, OH); x0, x1, lx = idx(None, IW, OW)
    xd = x.astype(np.float64)
    top = xd[:, y0][:, :, x0] * (1 - lx) + xd[:, y0][:, :, x1] * lx
    bot = xd[:, y1][:, :, x0] * (1 - lx) + xd[:, y1][:, :, x1] * lx
    return top * (1 - ly)[None, :, None] + bot * ly[None, :, None]
for (P, (IH, IW), (OH, OW)) in [(3, (14, 14), (224, 224)), (2, (28, 28), (224, 224)), (4, (17, 9), (5, 31)), (1, (1, 1), (3, 2))]:
    x = f32(rng.standard_normal((P, IH, IW))); y = np.zeros((P, OH, OW), np.float32)
    launch('resize_bilinear_f32', (min(cdiv(y.size, 256), 32 * 132), 1, 1), 256, x, y, RsP(P, IH, IW, OH, OW, IH / OH, IW / OW))
    compare(f"resize {IH}x{IW}->{OH}x{OW}", y, torch_bilinear(x, OH, OW), 2e-5, 1e-5)

def taps(sigma, truncate=4.0):
    r = int(truncate * sigma + 0.5); xs = np.arange(-r, r + 1); w = np.exp(-0.5 * xs ** 2 / sigma ** 2); return f32(w / w.sum())
for (P, H, W, sigma) in [(2, 224, 224, 4.0), (3, 57, 31, 4.0), (2, 5, 7, 4.0), (1, 30, 20, 1.5)]:
    x = f32(rng.uniform(0, 1, (P, H, W))); tp = taps(sigma); prm = BlP(P, H, W, len(tp) // 2)
    tmp = np.zeros_like(x); y = np.zeros_like(x)
    g = min(cdiv(x.size, 256), 32 * 132)
    launch('blur_v_f32', (g, 1, 1), 256, x, tp, tmp, prm); launch('blur_h_f32', (g, 1, 1), 256, tmp, tp, y, prm)
    want = np.stack([ndimage.gaussian_filter(x[p].astype(np.float64), sigma, mode='reflect', truncate=4.0) for p in range(P)])
    compare(f"blur {P}x{H}x{W} s{sigma} (scipy)", y, want, 1e-5, 1e-5)

# row selection (the ViT's [M] token and the gather of masked rows); grids as glue.rs
R, Cc = 53, 37
x = f32(rng.standard_normal((R, Cc))); tok = f32(rng.standard_normal(Cc))
m = (rng.integers(0, 3, R) == 0).astype(np.int32); y = np.zeros_like(x)
launch('mask_rows_f32', (min(cdiv(x.size, 256), 32 * 132), 1, 1), 256, x, m, tok, y, RowP(R, Cc, R))
compare("mask_rows 53x37", y, np.where(m[:, None] != 0, tok[None, :], x), 0, 0)
idx = np.array([52, 0, 7, 7, 30, R, 1], np.int32); y = np.zeros((len(idx), Cc), np.float32)
launch('gather_rows_f32', (min(cdiv(y.size, 256), 32 * 132), 1, 1), 256, x, idx, y, RowP(len(idx), Cc, R))
want = np.stack([x[i] if i < R else np.zeros(Cc, np.float32) for i in idx])
compare("gather_rows 7 of 53 (one out of range)", y, want, 0, 0)

# backbone glue: im2col (then a conv is col x weight), bias + act + skip, avg pool, to rows
def grid_(n): return (min(cdiv(n, 256), 32 * 132), 1, 1)
for (N, Cn, H, W, k, st) in [(2, 3, 17, 13, 3, 2), (1, 5, 9, 10, 3, 1), (3, 2, 8, 8, 5, 2)]:
    OH, OW = -(-H // st), -(-W // st)
    ph = max((OH - 1) * st + k - H, 0); pw = max((OW - 1) * st + k - W, 0)
    t, l = ph // 2, pw // 2
    x = f32(rng.standard_normal((N, Cn, H, W))); col = np.zeros((N, Cn * k * k, OH * OW), np.float32)
    launch('im2col_f32', grid_(col.size), 256, x, col, I2cP(N, Cn, H, W, OH, OW, k, k, st, st, t, l))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (t, ph - t), (l, pw - l)))
    want = np.zeros((N, Cn, k, k, OH, OW))
    for a in range(k):
        for b_ in range(k):
            want[:, :, a, b_] = xp[:, :, a:a + st * (OH - 1) + 1:st, b_:b_ + st * (OW - 1) + 1:st]
    compare(f"im2col {N}x{Cn}x{H}x{W} k{k} s{st} (tf-same)", col, want.reshape(N, Cn * k * k, OH * OW), 0, 0)
for (N, Cn, P, relu6, res) in [(2, 7, 31, 1, 0), (3, 5, 49, 0, 1), (1, 1, 1, 1, 1)]:
    x = f32(4 * rng.standard_normal((N, Cn, P))); b = f32(rng.standard_normal(Cn)); r = f32(rng.standard_normal((N, Cn, P)))
    y = np.zeros_like(x)
    launch('bias_act_nchw_f32', grid_(x.size), 256, x, b, r if res else x, y, BaP(N, Cn, P, relu6, res))
    want = x.astype(np.float64) + b[None, :, None]
    if relu6: want = np.clip(want, 0, 6)
    if res: want = want + r
    compare(f"bias_act_nchw relu6={relu6} res={res}", y, want, 1e-6, 1e-6)
for (P, H, W, k) in [(3, 28, 28, 3), (2, 5, 7, 3), (1, 9, 4, 5)]:
    x = f32(rng.standard_normal((P, H, W))); y = np.zeros_like(x)
    launch('avg_pool_f32', grid_(x.size), 256, x, y, PoP(P, H, W, k))
    r = k // 2; want = np.zeros((P, H, W))
    for i in range(H):
        for j in range(W):
            want[:, i, j] = x[:, max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].astype(np.float64).mean(axis=(1, 2))
    compare(f"avg_pool {P}x{H}x{W} k{k} (count_include_pad=False)", y, want, 1e-6, 1e-6)
N, Cn, P, Wd, off = 2, 5, 13, 11, 4
x = f32(rng.standard_normal((N, Cn, P))); y = np.full((N * P, Wd), 7.0, np.float32)
launch('nchw_to_rows_f32', grid_(x.size), 256, x, y, TrP(N, Cn, P, Wd, off))
want = np.full((N * P, Wd), 7.0); want[:, off:off + Cn] = x.transpose(0, 2, 1).reshape(N * P, Cn)
compare("nchw_to_rows 2x5x13 -> cols 4..9 of 11", y, want, 0, 0)

print("\nFAILS:", FAILS)
sys.exit(1 if FAILS else 0)
