"""Why the edge scans' input gradients are slow on XLA's CPU backend: the same 25-tap shifted multiply-add,
(a) as one fusion outside any loop, (b) 8 times in a lax.scan added into the loop carry, (c) 8 times in a
lax.scan written as the scan's output (a dynamic-update-slice with the work fused in, as the transposed
edge scans write each edge's input gradient). Prints ms per f32[64,32,32,32] slice for each.

    python bench/bench_scan_update.py [--out bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import _common as C  # noqa: E402

EDGES, SHAPE = 8, (64, 32, 32, 32)


def taps(x, k):
    """25 shifted multiply-adds of a padded x (the shape of a 5x5 depthwise's input gradient)."""
    out = 0
    for i in range(5):
        for j in range(5):
            out = out + x[:, i:i + SHAPE[1], j:j + SHAPE[2], :] * k[i, j]
    return jnp.maximum(out, 0)


def ms_per_slice(fn, *args, slices, reps=30):
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps / slices * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=None, help='append the table to this file (e.g. bench/RESULTS.md)')
    args = p.parse_args()
    n, h, w, c = SHAPE
    xs, ks = jnp.ones((EDGES, n, h + 4, w + 4, c)), jnp.ones((EDGES, 5, 5, c))
    carry = jax.jit(lambda xs, ks: jax.lax.scan(lambda acc, a: (acc + taps(*a), None), jnp.zeros(SHAPE), (xs, ks))[0])
    stacked = jax.jit(lambda xs, ks: jax.lax.scan(lambda acc, a: (acc, taps(*a)), 0., (xs, ks))[1])
    rows = [('one fusion, outside a loop', ms_per_slice(jax.jit(taps), xs[0], ks[0], slices=1)),
            ('in a scan, added into the carry', ms_per_slice(carry, xs, ks, slices=EDGES)),
            ('in a scan, written as its output (dynamic-update-slice)', ms_per_slice(stacked, xs, ks, slices=EDGES))]
    C.report([f'### Scan update forms ({time.strftime("%Y-%m-%d %H:%M")})', '', C.machine(), '',
              '| form | ms per slice |', '|---|---|'] + [f'| {name} | {ms:.2f} |' for name, ms in rows], args.out)


if __name__ == '__main__':
    main()
