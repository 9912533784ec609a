"""The strongest CPU peer a practitioner would assemble for the same inspection pipeline:
OpenVINO for the feature extractor (Lite0 blocks.4 + blocks.10, PaDiM aggregation, exported to
ONNX), faiss IndexFlatL2 (exact) for the nearest-prototype search, bilinear + Gaussian blur,
image score = max. Timed like `pmad inspect`: PNG decode included, batch 8, 2 threads.
Alternates with the pmad command round by round.

A measurement script (not the product). A project copy of
`../shared/reference/peer_pipeline.py` with `--ov-precision`: OpenVINO's default inference
precision on CPUs with AVX512-BF16 or AMX is bf16 (lower precision than pmad's f32, and
faster); `--ov-precision f32` runs the peer in f32, the same arithmetic as pmad. The features
are pmad's default (Lite0 blocks.4 + blocks.10, 3x3 PaDiM pooling, 152-d).
Usage: peer_pipeline.py --weights PTH --bank BANK.safetensors --images GLOB --pmad-cmd "..."
       [--rounds 3] [--ov-precision f32|default]
"""
import argparse
import glob
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'reference')
sys.path.insert(0, os.environ.get('PMAD_REFERENCE', REF))
from effnet_lite0 import load_lite0  # noqa: E402


class Embed(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        f = self.m.forward_taps(x, ('blocks.4', 'blocks.10'))
        a = f['blocks.4']
        b = F.interpolate(f['blocks.10'], size=a.shape[-2:], mode='bilinear', align_corners=False)
        a = F.avg_pool2d(a, 3, stride=1, padding=1, count_include_pad=False)
        b = F.avg_pool2d(b, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([a, b], 1)


def load(p):
    img = Image.open(p).convert('RGB').resize((224, 224), Image.BILINEAR)
    return (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) - 127.0) / 128.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--weights', required=True)
    ap.add_argument('--bank', required=True)
    ap.add_argument('--images', required=True)
    ap.add_argument('--pmad-cmd', required=True, help='command timed as a whole; image paths appended')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--n', type=int, default=64)
    ap.add_argument('--ov-precision', choices=['f32', 'default'], default='f32',
                    help="OpenVINO's inference precision (default: its own choice, bf16 on CPUs with "
                         "AVX512-BF16/AMX)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import faiss
    import openvino as ov
    from safetensors.torch import load_file
    faiss.omp_set_num_threads(a.threads)
    bank = load_file(a.bank)['prototypes'].float().numpy()
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    paths = sorted(glob.glob(a.images))[:a.n]
    d = tempfile.mkdtemp()
    onnx = os.path.join(d, 'embed.onnx')
    torch.onnx.export(Embed(load_lite0(a.weights)).eval(), (torch.zeros(8, 3, 224, 224),), onnx,
                      input_names=['x'], output_names=['f'], opset_version=17, dynamo=False,
                      dynamic_axes={'x': {0: 'b'}, 'f': {0: 'b'}})
    core = ov.Core()
    core.set_property('CPU', {'INFERENCE_NUM_THREADS': a.threads})
    props = {'PERFORMANCE_HINT': 'LATENCY'}
    if a.ov_precision == 'f32':
        props['INFERENCE_PRECISION_HINT'] = 'f32'
    compiled = core.compile_model(onnx, 'CPU', props)
    print(f"OpenVINO inference precision: {compiled.get_property('INFERENCE_PRECISION_HINT')}", flush=True)
    req = compiled.create_infer_request()

    def peer():
        scores = []
        for i in range(0, len(paths), 8):
            x = np.stack([load(p) for p in paths[i:i + 8]])
            f = req.infer({0: x})[0]  # (B,152,28,28)
            B, C, H, W = f.shape
            q = np.ascontiguousarray(f.transpose(0, 2, 3, 1).reshape(-1, C))
            dist, _ = index.search(q, 1)
            s = torch.from_numpy(np.sqrt(np.maximum(dist[:, 0], 0)).reshape(B, 1, H, W))
            up = F.interpolate(s, size=(256, 256), mode='bilinear', align_corners=False)[:, 0].numpy()
            for m in up:
                scores.append(float(gaussian_filter(m, sigma=4, truncate=4.0, mode='reflect').max()))
        return scores

    peer()  # warm-up
    cmd = shlex.split(a.pmad_cmd) + paths
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    for r in range(a.rounds):
        t = time.time()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        tp = len(paths) / (time.time() - t)
        t = time.time()
        peer()
        tq = len(paths) / (time.time() - t)
        print(f'round {r}: pmad {tp:.2f} img/s  peer (OpenVINO + faiss exact) {tq:.2f} img/s  ratio {tp / tq:.2f}', flush=True)


if __name__ == '__main__':
    main()
