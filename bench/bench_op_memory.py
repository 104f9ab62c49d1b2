"""Temporary memory of one op's gradient, depthwise 'conv' (XLA grouped convolution) vs 'shift'
(k*k shifted multiply-adds), read from `compiled.memory_analysis()`; nothing is run.

    python bench/bench_op_memory.py [--batch 64 --size 32 --channels 16] [--out bench/RESULTS.md]

Why: with plain autodiff the shift form's backward kept the k*k shifted copies of its input (2.6-6.3x
the conv's temporaries), so the DARTS-shape weight step asked for 32.5 GB; its custom VJP
(`ops._depthwise_shift`) brought that to 1.03-1.11x the conv's and the step to 8.4 GB.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from asose_jax.space.ops import make_op  # noqa: E402
from bench import _common as C  # noqa: E402

OPS = ('sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')


def grad_temp_mb(primitive: str, impl: str, x) -> float:
    op = make_op(primitive, x.shape[-1], 1, affine=True, depthwise_impl=impl)
    variables = jax.eval_shape(lambda k: op.init(k, x, True), jax.random.key(0))

    def loss(params, stats, x):
        y, _ = op.apply({'params': params, 'batch_stats': stats}, x, True, mutable=['batch_stats'])
        return jnp.sum(y ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 2)))
    compiled = grad.lower(variables['params'], variables['batch_stats'], x).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2 ** 20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--channels', type=int, default=16)
    p.add_argument('--out', default='')
    args = p.parse_args()
    x = jax.ShapeDtypeStruct((args.batch, args.size, args.size, args.channels), jnp.float32)
    rows = []
    for prim in OPS:
        conv, shift = grad_temp_mb(prim, 'conv', x), grad_temp_mb(prim, 'shift', x)
        rows.append(f'| {prim} | {conv:.1f} | {shift:.1f} | {shift / conv:.2f}x |')
    C.report([f'### Gradient temp memory of one op, depthwise conv vs shift ({time.strftime("%Y-%m-%d %H:%M")})', '',
              C.machine() + f'; input {args.batch}x{args.size}x{args.size}x{args.channels} (NHWC), stride 1', '',
              '| op | conv temp MB | shift temp MB | shift/conv |', '|---|---|---|---|'] + rows, args.out)


if __name__ == '__main__':
    main()
