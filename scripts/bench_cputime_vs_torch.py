#!/usr/bin/env python3
"""CPU-time (not wall-time) comparison of pmad's CPU kernels with PyTorch: work per CPU-second.

A companion to bench_vs_torch.py for a *shared* machine, where wall-clock throughput swings
with other people's jobs (and torch's OpenMP barriers suffer far more from a busy core than
pmad's rayon pool, which flatters pmad). CPU time charged to the process is much steadier, so
this compares kernel efficiency fairly; it says nothing about parallel scaling, so run it with
1 thread (the default) and report bench_vs_torch.py's wall-time ratios beside it.

    python3 scripts/bench_cputime_vs_torch.py --filter attention --rounds 3 \\
        target/release/pmad [older/pmad ...]

pmad: `perf stat -e task-clock` of `pmad --threads T bench --filter CASE` at two --min-time
values; CPU-seconds per call = (task-clock difference) / (timed-call difference), so process
start-up, input set-up and warm-up cancel. torch: time.process_time() around calls of the same
computation as bench_vs_torch.py builds (torch.set_num_threads(T), inference mode) after 3
warm-up calls. Every round runs each binary and then torch, case by case; medians over rounds
are printed, with each binary's ratio to torch's reference variant. Needs `perf` and torch.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_vs_torch as bvt  # noqa: E402 (the torch equivalents and the work formula)


def pmad_cpu_seconds(binary, case, threads, min_time):
    """(CPU-seconds charged to the process, timed calls) for one `pmad bench` run."""
    cmd = ['perf', 'stat', '-x,', '-e', 'task-clock', binary, '--threads', str(threads),
           'bench', '--filter', case, '--json', '-', '--min-time', str(min_time),
           '--warmup', '0.05']
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f'{" ".join(cmd)} failed: {out.stderr.strip()}')
    hits = [r for r in json.loads(out.stdout)['results'] if r['name'] == case]
    if not hits:
        sys.exit(f'{binary}: case {case} did not run: {out.stderr.strip()}')
    clock = [line for line in out.stderr.splitlines() if 'task-clock' in line]
    if not clock:
        sys.exit(f'perf stat printed no task-clock (is perf allowed here?): {out.stderr.strip()}')
    return float(clock[0].split(',')[0]) / 1e3, hits[0]['iters']


def pmad_throughput(binary, listed, threads, short, long):
    c1, i1 = pmad_cpu_seconds(binary, listed['name'], threads, short)
    c2, i2 = pmad_cpu_seconds(binary, listed['name'], threads, long)
    if i2 <= i1 or c2 <= c1:
        sys.exit(f'{binary} {listed["name"]}: the long run did no more work than the short one')
    return bvt.throughput(listed, (c2 - c1) / (i2 - i1))


def torch_throughput(fn, listed, seconds):
    for _ in range(3):
        fn()
    calls, start = 0, time.process_time()
    while time.process_time() - start < seconds or calls < 3:
        fn()
        calls += 1
    return bvt.throughput(listed, (time.process_time() - start) / calls)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('pmad', nargs='+', help='pmad binaries (the first one lists the cases)')
    ap.add_argument('--filter', required=True, help='cases whose name contains this')
    ap.add_argument('--threads', type=int, default=1, help='threads for pmad and torch')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--short', type=float, default=0.3, help='pmad --min-time of the short run')
    ap.add_argument('--long', type=float, default=1.5, help='pmad --min-time of the long run')
    ap.add_argument('--torch-time', type=float, default=1.0, help='torch CPU-seconds per case')
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    listing = argparse.Namespace(pmad=args.pmad[0], threads=args.threads, weights=None,
                                 filter=args.filter)
    cases = bvt.pmad_list(listing)
    names = [os.path.basename(b) if args.pmad.count(b) == 1 else b for b in args.pmad]
    load_start = os.getloadavg()[0]
    results = {}
    for _ in range(args.rounds):
        for listed in cases:
            row = results.setdefault(listed['name'], {})
            for name, binary in zip(names, args.pmad):
                tp = pmad_throughput(binary, listed, args.threads, args.short, args.long)
                row.setdefault(name, []).append(tp)
            variants, ref = bvt.torch_case(listed['spec'], argparse.Namespace(pth=None))
            if variants is None:
                continue
            with torch.inference_mode(listed['spec']['kind'] not in bvt.NEEDS_GRAD):
                for vname, fn in variants.items():
                    tp = torch_throughput(fn, listed, args.torch_time)
                    row.setdefault('torch ' + vname, []).append(tp)
            row.setdefault('_ref', ['torch ' + ref] if ref else [])
    print(f'work per CPU-second, {args.threads} thread(s), medians of {args.rounds} rounds '
          f'(load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end)')
    for case, row in results.items():
        ref = (row.pop('_ref', None) or [None])[0]
        med = {k: statistics.median(v) for k, v in row.items()}
        cells = '  '.join(f'{k} {v:.2f}' for k, v in med.items())
        ratios = '  '.join(f'{n}/{ref} {med[n] / med[ref]:.3f}' for n in names
                           if ref in med) if ref else ''
        print(f'{case}: {cells}  |  {ratios}')
        for k, v in row.items():
            print(f'    {k}: {", ".join(f"{x:.1f}" for x in v)}')


if __name__ == '__main__':
    main()
