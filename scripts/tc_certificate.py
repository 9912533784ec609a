"""How often the bf16 tensor-core search's certificate holds on a model's real banks (numpy model
of kernels/proto_nn.cu `proto_nn_rerank_f32`; the search is exact either way, a failed
certificate only costs an f32 rescan of that query).

For each registered class: 1,500 of its prototypes are held out as queries (plain, and with
N(0, 0.5) / N(0, 2) noise) against the rest, and the other classes' prototypes serve as
foreign queries. A query is certified when the (K+1)-th smallest approximate distance, less
the bf16 error bound 2^-7 * 1.03 |q| max|p| and f32 slack, exceeds the best of the K
candidates' exact distances.

  python3 scripts/tc_certificate.py MODEL_DIR [K]      (needs numpy)
"""
import glob, json, os, struct, sys

import numpy as np


def load(path):
    b = open(path, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    head = json.loads(b[8:8 + n])
    v = head['prototypes']
    s, e = v['data_offsets']
    return np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32).reshape(v['shape'])


def bf16(x):
    """Round to nearest even bfloat16, as glue.cu's f32_to_bf16, back as f32."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32)).view(np.float32)


def certified(q, p, k):
    d = p.shape[1]
    pn = (p.astype(np.float64) ** 2).sum(1)
    qn = (q.astype(np.float64) ** 2).sum(1)
    v = pn[None, :] - 2 * (bf16(q).astype(np.float64) @ bf16(p).astype(np.float64).T)
    exact = qn[:, None] + pn[None, :] - 2 * (q.astype(np.float64) @ p.astype(np.float64).T)
    part = np.argpartition(v, k, axis=1)[:, :k + 1]
    vals = np.take_along_axis(v, part, 1)
    order = np.argsort(vals, 1)
    vk = np.take_along_axis(vals, order[:, k:k + 1], 1)[:, 0]
    cand = np.take_along_axis(part, order[:, :k], 1)
    best = np.take_along_axis(exact, cand, 1).min(1)
    slack = (d + 8) * 2.0 ** -22
    eps = 1.03 * 2.0 ** -7 * np.sqrt(qn) * np.sqrt(pn.max()) + slack * (qn + pn.max())
    return ((qn + vk - eps) * (1 - slack) > best).mean()


def main():
    model, k = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 16
    banks = {}
    for cur in sorted(glob.glob(os.path.join(model, 'classes', '*', 'CURRENT'))):
        cls = os.path.basename(os.path.dirname(cur))
        version = open(cur).read().strip()
        banks[cls] = load(os.path.join(os.path.dirname(cur), version, 'prototypes.safetensors'))
    rng = np.random.default_rng(1)
    for cls, p in banks.items():
        idx = rng.permutation(len(p))
        held, rest = p[idx[:1500]], p[np.sort(idx[1500:])]
        for noise in (0.0, 0.5, 2.0):
            q = held + rng.normal(0, noise, held.shape).astype(np.float32)
            print(f"{cls} ({len(rest)} prototypes): held-out + N(0, {noise}): certified {certified(q, rest, k):.3f}")
        for other, po in banks.items():
            if other != cls:
                q = po[rng.choice(len(po), min(1500, len(po)), replace=False)]
                print(f"{cls} ({len(rest)} prototypes): {other} as queries: certified {certified(q, rest, k):.3f}")


if __name__ == '__main__':
    main()
