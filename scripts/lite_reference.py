# Independent float64 numpy forward of an EfficientNet-Lite from its safetensors (the architecture
# read from the tensor shapes, as shared/reference/feature_levers.py does), to cross-check pmad.
# Usage: python3 scripts/lite_reference.py weights/efficientnet_lite1.safetensors INPUT.safetensors
# (INPUT holds `input` [1,3,H,W]); prints the top-5 classes and probabilities.
import json, struct, sys, numpy as np
def load(p):
    b = open(p, 'rb').read(); L = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8+L]); d = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        s, e = v['data_offsets']; dt = {'F32': np.float32, 'I64': np.int64}[v['dtype']]
        d[k] = np.frombuffer(b[8+L+s:8+L+e], dtype=dt).reshape(v['shape'])
    return d
def pad_same(x, k, s):
    h, w = x.shape[1:]
    ph = max((-(-h//s)-1)*s + k - h, 0); pw = max((-(-w//s)-1)*s + k - w, 0)
    return np.pad(x, ((0,0),(ph//2, ph-ph//2),(pw//2, pw-pw//2)))
def bn(x, sd, n):
    g, b, m, v = (sd[f'{n}.{a}'] for a in ('weight','bias','running_mean','running_var'))
    return (x - m[:,None,None]) / np.sqrt(v[:,None,None] + 1e-3) * g[:,None,None] + b[:,None,None]
def conv(x, w, s, groups=1):
    k = w.shape[-1]; x = pad_same(x, k, s); c, H, W = x.shape
    oh = (H - k)//s + 1; ow = (W - k)//s + 1
    if groups == 1:
        out = np.zeros((w.shape[0], oh, ow), np.float64)
        for i in range(k):
            for j in range(k):
                out += np.einsum('oc,chw->ohw', w[:,:,i,j], x[:, i:i+s*oh:s, j:j+s*ow:s])
    else:
        out = np.zeros((c, oh, ow), np.float64)
        for i in range(k):
            for j in range(k):
                out += w[:,0,i,j][:,None,None] * x[:, i:i+s*oh:s, j:j+s*ow:s]
    return out
r6 = lambda x: np.clip(x, 0, 6)
sd = {k: v.astype(np.float64) for k, v in load(sys.argv[1]).items()}
x = load(sys.argv[2])['input'][0].astype(np.float64)
n = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('_blocks.'))
strides = (1,2,2,2,1,2,1); stage = -1; prev = None
x = r6(bn(conv(x, sd['_conv_stem.weight'], 2), sd, '_bn0'))
for i in range(n):
    p = f'_blocks.{i}'; dw = sd[f'{p}._depthwise_conv.weight']; pw = sd[f'{p}._project_conv.weight']
    cout = pw.shape[0]
    if cout != prev: stage += 1; s = strides[stage]
    else: s = 1
    prev = cout; inp = x
    if f'{p}._expand_conv.weight' in sd: x = r6(bn(conv(x, sd[f'{p}._expand_conv.weight'], 1), sd, f'{p}._bn0'))
    x = r6(bn(conv(x, dw, s, groups=x.shape[0]), sd, f'{p}._bn1'))
    x = bn(conv(x, pw, 1), sd, f'{p}._bn2')
    if s == 1 and inp.shape == x.shape: x = x + inp
x = r6(bn(conv(x, sd['_conv_head.weight'], 1), sd, '_bn1'))
f = x.mean(axis=(1,2)); logits = sd['_fc.weight'] @ f + sd['_fc.bias']
p = np.exp(logits - logits.max()); p /= p.sum()
for c in np.argsort(-p)[:5]: print(f'{c} {p[c]:.6f}')
