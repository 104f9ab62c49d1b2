"""Per-primitive side-by-side benchmark: one DARTS candidate op's forward + backward (gradients of its
parameters and input), JAX (jit) vs the PyTorch twin's op (eager), same shape, alternating in rounds.
It says which ops a whole-step ratio (bench_steps.py) loses or wins on.

    python bench/bench_ops.py --shape darts [--ops sep_conv_3x3,bn] [--stride 1] [--out bench/RESULTS.md]

The shape is the first search cell's input at --shape (darts: batch 64, 32x32, C=16). Search-cell ops are
non-affine, pools are followed by BN, as in the search cells; `bn` is one affine BN alone. The torch op
runs in each of --torch-formats with stock BN kernels (as bench_steps.py) and the ratio divides by the
faster format. Parameters are random on both sides (only the timing is compared; parity/ checks values).

Run it as `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 python ...`: glibc
otherwise maps every block over 32 MB afresh and unmaps it on free, so an op whose temporaries pass that size
pays for zeroing new pages on every call (a JAX sep_conv_3x3 at the DARTS shape: 10k page faults and ~1.6x
the time), which a whole step does not show in the same proportion.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from asose_jax.space import ops  # noqa: E402
from asose_jax.space.genotype import PRIMITIVES  # noqa: E402
from bench import _common as C  # noqa: E402

def jax_op(prim: str, x: np.ndarray, stride: int, depthwise: str, pointwise: str):
    """A closure running `iters` jitted forward + backward passes of one op (train mode)."""
    c = x.shape[-1]
    m = (ops.batch_norm(True, True) if prim == 'bn'
         else ops.make_op(prim, c, stride, False, search=True, depthwise_impl=depthwise))
    args = () if prim == 'bn' else (True,)
    xj = jnp.asarray(x)
    with ops.pointwise(pointwise):
        variables = m.init(jax.random.key(0), xj, *args)

    def loss(params, x):
        with ops.pointwise(pointwise):
            y, _ = m.apply({**variables, 'params': params}, x, *args, mutable=['batch_stats'])
        return jnp.sum(y * y)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    params = variables.get('params', {})

    def run(iters):
        for _ in range(iters):
            out = grad(params, xj)
        jax.block_until_ready(out)
    return run


def torch_op(prim: str, x: np.ndarray, stride: int, memory_format: str):
    import torch
    from parity import torch_ops

    c = x.shape[-1]
    m = torch.nn.BatchNorm2d(c) if prim == 'bn' else torch_ops.make_op(prim, c, stride, False, search=True)
    torch_ops.set_running_var_mode(m, 'unbiased')  # stock BN kernels, as a torch user's code runs
    fmt = torch.channels_last if memory_format == 'channels_last' else torch.contiguous_format
    m = m.to(memory_format=fmt).train()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt).requires_grad_(True)

    def run(iters):
        for _ in range(iters):
            y = m(xt)
            (y * y).sum().backward()
    return run


def timed_ms(run, iters):
    t0 = time.perf_counter()
    run(iters)
    return (time.perf_counter() - t0) / iters * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--shape', default='darts', help=f'one of {sorted(C.SHAPES)}')
    p.add_argument('--ops', default=','.join([q for q in PRIMITIVES if q != 'none'] + ['bn']))
    p.add_argument('--stride', type=int, default=1)
    p.add_argument('--iters', type=int, default=20)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--depthwise', default='auto', help="'shift', 'conv' or 'auto' (see _common.depthwise_for)")
    p.add_argument('--pointwise', default='dot', help="1x1 convs: 'conv' (nn.Conv) or 'dot' (matmul)")
    p.add_argument('--torch-formats', default='contiguous,channels_last')
    p.add_argument('--out', default='', help='append the table to this file')
    args = p.parse_args()
    if args.shape not in C.SHAPES:
        raise SystemExit(f'unknown shape {args.shape!r}; allowed: {sorted(C.SHAPES)}')
    names = [q for q in args.ops.split(',') if q]
    if set(names) - set(PRIMITIVES) - {'bn'}:
        raise SystemExit(f'--ops {args.ops!r}: from {", ".join(PRIMITIVES + ("bn",))}')
    formats = C.torch_formats(args.torch_formats)
    c, _, batch, size = C.SHAPES[args.shape]
    x = np.random.default_rng(0).standard_normal((batch, size, size, c), np.float32)
    depthwise = C.depthwise_for(args.depthwise)
    lines = [f'### Op benchmark, forward + backward ({time.strftime("%Y-%m-%d %H:%M")})', '',
             f'{C.machine()}; torch {__import__("torch").__version__} ({" and ".join(formats)}, stock BN; '
             f'the faster divides); input {batch}x{size}x{size}x{c}, stride {args.stride}, depthwise {depthwise}, '
             f'pointwise {args.pointwise}; ms per pass, median of {args.rounds} rounds of {args.iters}', '',
             '| op | JAX ms | torch ms | torch by format | JAX/torch time |', '|---|---|---|---|---|']
    for name in names:
        j = jax_op(name, x, args.stride, depthwise, args.pointwise)
        t = {f: torch_op(name, x, args.stride, f) for f in formats}
        j(2)
        for run in t.values():
            run(2)
        jt, tt = [], {f: [] for f in formats}
        for _ in range(args.rounds):  # alternate so that machine noise hits both sides alike
            jt.append(timed_ms(j, args.iters))
            for f, run in t.items():
                tt[f].append(timed_ms(run, args.iters))
        by_format = {f: C.median(v) for f, v in tt.items()}
        best = min(by_format.values())
        lines.append(f'| {name} | {C.median(jt):.2f} | {best:.2f} | '
                     + ', '.join(f'{f} {v:.2f}' for f, v in by_format.items())
                     + f' | {C.median(jt) / best:.2f} |')
        print(lines[-1], flush=True)
    C.report(lines, args.out)


if __name__ == '__main__':
    main()
