"""PyTorch side of the device check: the operations pmad's CUDA kernels do, at the same
shapes as benches/cuda_kernels.rs, timed on this machine, with pmad/torch ratios read from
criterion's estimates (written by bin/cuda_kernels into --criterion).

  SDPA attention (fp32)         vs attention/fwd_b64_n196_h{3,12}_d64
  SDPA attention (bf16)         vs attention/tc_bf16_b64_n196_h{3,12}_d64 (tensor cores)
  cdist + argmin                vs proto_nn/f32_6272x{16384x152,100000x272}
  linear, layer_norm            vs glue/linear_12544x768to3072, glue/layernorm_12544x768
  log_softmax entropy + CE      vs entropy/r3776_v8192
  the same ViT forward          vs vit/{small,base}_forward_b64 (unfold, patch embed, [M]
                                   token, pre-norm blocks, head on masked rows, entropy + CE)
  bf16 autocast linear, ViT      vs glue/linear_bf16_*, vit/{small,base}_bf16_forward_b64
                                   (pmad --precision bf16: GEMMs on bf16 operands, f32 sums)
  bf16 matmul + argmin search    vs proto_nn/tc_bf16_* (pmad's bf16 search: tensor cores, exact)
The fp32 rows keep TF32 off (torch's default for matmul; set explicitly here) like pmad's f32.
Without CUDA it runs on the CPU with small shapes and prints no ratios (a dry run).
Prints a markdown table to stdout.
"""
import argparse, json, math, os, statistics, time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--criterion", default="")
args = ap.parse_args()
cuda = torch.cuda.is_available()
dev = torch.device("cuda" if cuda else "cpu")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)
small = not cuda  # dry run: shrink


def timed(fn, reps=20):
    """Median seconds per call (after warm-up), synchronised."""
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    ts = []
    for _ in range(reps if not small else 3):
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def pmad_seconds(group, name):
    p = os.path.join(args.criterion, group, name, "new", "estimates.json")
    try:
        return json.load(open(p))["median"]["point_estimate"] * 1e-9
    except (OSError, KeyError, ValueError):
        return None


rows = []


def report(op, group, name, torch_s):
    p = pmad_seconds(group, name) if args.criterion else None
    rows.append((op, torch_s, p))


B = 64 if not small else 2
with torch.no_grad():
    for H in (3, 12):
        q, k, v = (torch.randn(B, H, 196, 64, device=dev) for _ in range(3))
        report(f"attention b{B} n196 h{H} d64", "attention", f"fwd_b64_n196_h{H}_d64",
               timed(lambda: F.scaled_dot_product_attention(q, k, v)))
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        report(f"attention b{B} n196 h{H} d64 bf16", "attention", f"tc_bf16_b64_n196_h{H}_d64",
               timed(lambda: F.scaled_dot_product_attention(qb, kb, vb)))
    for P, D in ((16384, 152), (100000, 272)):
        if small:
            P = 2048
        q = torch.randn(8 * 784, D, device=dev)
        bank = torch.randn(P, D, device=dev)
        report(f"nearest 6272 x {P} x {D} (cdist+argmin)", "proto_nn", f"f32_6272x{P}x{D}",
               timed(lambda: torch.cdist(q, bank).argmin(1)))
    R = 64 * 196 if not small else 512
    x = torch.randn(R, 768, device=dev)
    lin = torch.nn.Linear(768, 3072).to(dev)
    report(f"linear {R}x768->3072", "glue", f"linear_{R}x768to3072", timed(lambda: lin(x)))
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        report(f"linear {R}x768->3072 bf16", "glue", f"linear_bf16_{R}x768to3072", timed(lambda: lin(x)))
    for P, D in ((16384, 152), (100000, 272)):
        if small:
            P = 2048
        q16 = torch.randn(8 * 784, D, device=dev).bfloat16()
        b16 = torch.randn(P, D, device=dev).bfloat16()
        bn = (b16.float() ** 2).sum(1)
        # |q - p|^2 = |q|^2 - 2 q.p + |p|^2: the argmin needs only |p|^2 - 2 q.p (bf16 GEMM).
        report(f"nearest 6272 x {P} x {D} (bf16 matmul+argmin)", "proto_nn", f"tc_bf16_6272x{P}x{D}",
               timed(lambda: (bn - 2 * (q16 @ b16.T).float()).argmin(1)))
    ln = torch.nn.LayerNorm(768, eps=1e-6).to(dev)
    report(f"layernorm {R}x768", "glue", f"layernorm_{R}x768", timed(lambda: ln(x)))
    rows_e = 64 * 59
    logits = torch.randn(rows_e, 8192, device=dev)
    tgt = torch.arange(rows_e, device=dev) * 37 % 8192

    def ent():
        lp = logits.log_softmax(-1)
        return -(lp.exp() * lp).sum(-1), -lp.gather(1, tgt[:, None])[:, 0]
    report(f"entropy + CE {rows_e} x 8192", "entropy", f"r{rows_e}_v8192", timed(ent))

    # The ViT of src/recon/vit.rs, random weights of the same shapes.
    for preset, (d, depth, dec, heads, mlp) in (("small", (192, 6, 2, 3, 768)), ("base", (768, 12, 0, 12, 3072))):
        V, N = 8192, 196

        def lin_(i, o):
            return torch.nn.Linear(i, o).to(dev)
        blocks = []
        for _ in range(depth + dec):
            blocks.append(dict(n1=torch.nn.LayerNorm(d, eps=1e-6).to(dev), qkv=lin_(d, 3 * d), proj=lin_(d, d),
                               n2=torch.nn.LayerNorm(d, eps=1e-6).to(dev), fc1=lin_(d, mlp), fc2=lin_(mlp, d)))
        pe, head = lin_(768, d), lin_(d, V)
        mtok, pos = torch.randn(d, device=dev) * .02, torch.randn(N, d, device=dev) * .02
        dpos = torch.randn(N, d, device=dev) * .02
        enorm, norm = torch.nn.LayerNorm(d, eps=1e-6).to(dev), torch.nn.LayerNorm(d, eps=1e-6).to(dev)
        Bv = 64 if not small else 2
        imgs = torch.randn(Bv, 3, 224, 224)  # on the host, like pmad's input
        mask = (torch.arange(Bv * N) % 10 < 3).reshape(Bv, N)
        tokens = (torch.arange(Bv * N) % V).reshape(Bv, N)

        def block(b, x):
            h = b["n1"](x)
            q, k, v = b["qkv"](h).reshape(Bv, N, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(Bv, N, d)
            x = x + b["proj"](a)
            return x + b["fc2"](F.gelu(b["fc1"](b["n2"](x))))

        def vit():
            x = imgs.to(dev)
            m, t = mask.to(dev), tokens.to(dev)
            p = x.unfold(2, 16, 16).unfold(3, 16, 16).permute(0, 2, 3, 1, 4, 5).reshape(Bv, N, 768)
            x = pe(p)
            x = torch.where(m[..., None], mtok, x) + pos
            for b in blocks[:depth]:
                x = block(b, x)
            if dec:
                x = enorm(x) + dpos
                for b in blocks[depth:]:
                    x = block(b, x)
            lg = head(norm(x[m]))
            lp = lg.log_softmax(-1)
            e = -(lp.exp() * lp).sum(-1)
            ce = -lp.gather(1, t[m][:, None])[:, 0]
            return e.cpu(), ce.cpu()
        report(f"ViT {preset} forward, {Bv} images", "vit", f"{preset}_forward_b64", timed(vit, reps=10))
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            report(f"ViT {preset} forward, {Bv} images, bf16", "vit", f"{preset}_bf16_forward_b64",
                   timed(vit, reps=10))


print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if cuda else 'cpu (dry run, small shapes)'}, TF32 off\n")
print("| operation | torch ms | pmad ms | torch / pmad (>1: pmad faster) |")
print("|---|---:|---:|---:|")
for op, t, p in rows:
    ratio = f"{t / p:.2f}" if p else "-"
    pm = f"{p * 1e3:.3f}" if p else "-"
    print(f"| {op} | {t * 1e3:.3f} | {pm} | {ratio} |")
