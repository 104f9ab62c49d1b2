"""vmap sweep throughput: N searches in one program vs N separate runs of the same (mixture) step.

    python bench/bench_sweep.py --shape smoke --ns 1,2,4,8 --iters 5 [--single-path-baseline] [--out bench/RESULTS.md]

Under vmap lax.switch becomes select, so sweeps run the mixture path (single_path=False); the
table also lists the plain hard single-path step for reference (what N sequential single-path
runs would get).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from asose_jax import sweep  # noqa: E402
from asose_jax.search.optim import ArchOptConfig  # noqa: E402
from bench import _common as C  # noqa: E402


def time_steps(fn, state, batch, key, iters, warmup=1):
    for _ in range(warmup):
        state, m = fn(state, batch, key)
    jax.block_until_ready((state, m))
    t0 = time.perf_counter()
    for _ in range(iters):
        state, m = fn(state, batch, key)
    jax.block_until_ready((state, m))
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--shape', default='smoke')
    p.add_argument('--ns', default='1,2,4,8')
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--depthwise', default='auto', help="'shift', 'conv' or 'auto' (see _common.depthwise_for)")
    p.add_argument('--no-hard', action='store_true', help='skip the hard single-path reference (slow GPU compile)')
    p.add_argument('--pointwise', default='conv', help="1x1 convs: 'conv' (nn.Conv, the default) or 'dot' (matmul: model.pointwise_impl)")
    p.add_argument('--out', default='')
    args = p.parse_args()
    spec, bs, size = C.shape_spec(args.shape)
    args.depthwise = C.depthwise_for(args.depthwise)
    cfg = C.step_config('hardmix', 'fp32', args.depthwise, args.pointwise)
    _, wtx, atx, state = C.make_state(spec, size)
    b, key = C.batch(bs, size), jax.random.key(1)
    rows = []
    # baseline: one run of the mixture step, N runs cost N times its time
    base = C.compile_step(C.search_step(spec, cfg, wtx, atx, 'weight'), state, b, key)
    base_ips = bs * args.iters / time_steps(base.fn, state, b, key, args.iters)
    print('one run', base_ips, base.compile_s, flush=True)
    if not args.no_hard:
        _, _, _, state = C.make_state(spec, size)
        hard = C.compile_step(C.search_step(spec, dataclasses.replace(cfg, single_path=True), wtx, atx, 'weight'),
                              state, b, key)
        hard_ips = bs * args.iters / time_steps(hard.fn, state, b, key, args.iters)
    for n in [int(x) for x in args.ns.split(',')]:
        keys = jax.random.split(jax.random.key(0), n)
        states = sweep.init_states(spec, keys, [3e-4] * n, size, wtx, ArchOptConfig())
        vs = sweep.vmapped_steps(spec, cfg, wtx, sweep.arch_transform_injected(ArchOptConfig()))
        nb = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), b)
        nk = jnp.stack([key] * n)
        comp = C.compile_step(vs.weight_step, states, nb, nk)
        ips = n * bs * args.iters / time_steps(comp.fn, states, nb, nk, args.iters)
        rows.append((n, ips, ips / base_ips, comp.compile_s, comp.temp_mb))
        print(n, ips, comp.compile_s, flush=True)
    out = [f'### vmap sweep, weight step ({time.strftime("%Y-%m-%d %H:%M")})', '', C.machine() +
           f'; shape {args.shape} (batch {bs}); depthwise {args.depthwise}; pointwise {args.pointwise}; iters={args.iters}', '',
           f'One run, mixture step: {base_ips:.1f} img/s (compile {base.compile_s:.1f} s); hard single path: '
           + ('not run' if args.no_hard else f'{hard_ips:.1f} img/s')
           + f'. N separate mixture runs = {base_ips:.1f} img/s in total.', '',
           '| N | total img/s (vmap) | vs N separate runs | compile s | temp MB |', '|---|---|---|---|---|']
    out += [f'| {n} | {ips:.1f} | {r:.2f}x | {c:.1f} | {m:.1f} |' for n, ips, r, c, m in rows]
    C.report(out, args.out)


if __name__ == '__main__':
    main()
