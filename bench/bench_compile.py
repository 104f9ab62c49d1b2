"""Compile time of the search weight step under XLA/JAX settings, each in a fresh process with the
persistent cache off (flags must be set before jax starts), plus the step time they lead to; and the
time to a compiled step when a previous process left it in the persistent cache.

    python bench/bench_compile.py --shape smoke --path hard [--out bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {  # name: (XLA_FLAGS additions, jax config updates)
    'default': ('', {}),
    'jax_disable_most_optimizations': ('', {'jax_disable_most_optimizations': True}),
    'xla_backend_optimization_level=0': ('--xla_backend_optimization_level=0', {}),
    'xla_llvm_disable_expensive_passes': ('--xla_llvm_disable_expensive_passes=true', {}),
    'opt_level=1 + no expensive llvm passes': (
        '--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true', {}),
    # a repeated run (resume, same config again): the step comes from the persistent cache that an
    # earlier process filled (as `compilation.enable_compilation_cache` does in train/sweep)
    'persistent cache (second process)': ('', {'jax_persistent_cache_min_compile_time_secs': 0.0,
                                              'jax_persistent_cache_min_entry_size_bytes': 0}),
}
WARM_CACHE = 'persistent cache (second process)'

CHILD = r'''
import json, sys, time
import jax
for k, v in json.loads(sys.argv[1]).items():
    jax.config.update(k, v)
jax.config.update('jax_enable_compilation_cache', 'jax_compilation_cache_dir' in json.loads(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
from bench import _common as C
shape, path, iters = sys.argv[3], sys.argv[4], int(sys.argv[5])
spec, bs, size = C.shape_spec(shape)
_, wtx, atx, state = C.make_state(spec, size)
b, key = C.batch(bs, size), jax.random.key(1)
comp = C.compile_step(C.search_step(spec, C.step_config(path, 'fp32', sys.argv[6]), wtx, atx, 'weight'), state, b, key)
state, m = comp.fn(state, b, key); jax.block_until_ready(m)
t0 = time.perf_counter()
for _ in range(iters):
    state, m = comp.fn(state, b, key)
jax.block_until_ready(m)
print('RESULT' + json.dumps({'compile_s': comp.compile_s, 'trace_s': comp.trace_s, 'lower_s': comp.lower_s,
                             'xla_s': comp.xla_s, 'ips': bs * iters / (time.perf_counter() - t0)}))
'''


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--shape', default='smoke')
    p.add_argument('--path', default='hard')
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--depthwise', default='shift')
    p.add_argument('--settings', default=','.join(SETTINGS))
    p.add_argument('--out', default='')
    args = p.parse_args()
    rows = []
    for name in args.settings.split(','):
        flags, updates = SETTINGS[name]
        env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + ' ' + flags).strip())
        cmd = [sys.executable, '-c', CHILD, json.dumps(updates), ROOT, args.shape, args.path, str(args.iters),
               args.depthwise]
        if name == WARM_CACHE:  # a first process fills a fresh cache; the second one is timed
            cmd[3] = json.dumps(dict(updates, jax_compilation_cache_dir=tempfile.mkdtemp(prefix='bench_cache_')))
            subprocess.run(cmd, env=env, capture_output=True, check=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            rows.append((name, *[float('nan')] * 5, proc.stderr.strip().splitlines()[-1][:120]))
        else:
            r = json.loads([l for l in proc.stdout.splitlines() if l.startswith('RESULT')][-1][6:])
            rows.append((name, r['compile_s'], r['trace_s'], r['lower_s'], r['xla_s'], r['ips'], ''))
        print(rows[-1], flush=True)
    sys.path.insert(0, ROOT)
    from bench._common import machine, report
    out = [f'### Compile time, search weight step ({time.strftime("%Y-%m-%d %H:%M")})', '',
           machine() + f'; shape {args.shape}, path {args.path}, depthwise {args.depthwise}; persistent cache off '
           'except in its own row; compile s = trace (Python) + lower (to StableHLO) + XLA (compile, or load from the cache)',
           '', '| setting | compile s | trace s | lower s | XLA s | step img/s | note |', '|---|---|---|---|---|---|---|']
    out += [f'| {n} | {c:.1f} | {t:.1f} | {lo:.1f} | {x:.1f} | {i:.1f} | {e} |' for n, c, t, lo, x, i, e in rows]
    report(out, args.out)


if __name__ == '__main__':
    main()
