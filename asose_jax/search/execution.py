"""How the search steps are computed: the execution form. The forms compute the same parameters and
the same values (to float rounding); they differ in speed, memory and compile time, so they are chosen
from the backend, not configured. Each `model.*` field below left at 'auto' (or None) takes the choice;
a value given overrides it (benchmarks do). What each form does and what it measured: docs/design.md.

- CPU, XLA optimisations on (the product): the measured CPU recipe. `shift` depthwise convs and pools,
  1x1 convs as matmuls, every candidate op rematerialised, edge input gradients in their own fusions: the
  smoke-shape search steps 4.1x the images/s of the plain forms (2-core Intel Xeon).
- CPU, optimisations off (`jax_disable_most_optimizations`, `search.fast_compile`: the tests): the plain
  forms, which compile ~20% faster unoptimised; a short run is its compiles.
- CPU, NAS-Bench-201 space (plain convs, no depthwise): 1x1 convs as matmuls only, the form its smoke
  search was timed in (the DARTS recipe's remat and shift pools are unmeasured there).
- GPU/TPU: `shift` depthwise (DARTS-shape mixture weight step 246.7 vs 114 img/s with `conv`, H200); nn.Conv
  1x1s (matmuls abort XLA's GPU compiler at the DARTS shape, jax 0.11.2); no remat (unmeasured there).
`unroll_edges` is never chosen: it compiles 3-4x longer for the mixture and runs the single path slower.
"""
from __future__ import annotations

import jax

FIELDS = ('depthwise_impl', 'pointwise_impl', 'remat_branch', 'unroll_edges', 'materialize_edge_grads')
PLAIN = dict(depthwise_impl='conv', pointwise_impl='conv', remat_branch=False, unroll_edges=False,
             materialize_edge_grads=False)
CPU_RECIPE = dict(PLAIN, depthwise_impl='shift', pointwise_impl='dot', remat_branch=True, materialize_edge_grads=True)
NB201_CPU = dict(PLAIN, pointwise_impl='dot')
ACCELERATOR = dict(PLAIN, depthwise_impl='shift')


def choose(backend: str, optimized: bool, space: str = 'darts') -> dict:
    """The execution form for `backend` ('cpu', 'gpu', 'tpu') and search space, compiling with XLA
    optimisations or not."""
    if backend != 'cpu':
        return dict(ACCELERATOR)
    if not optimized:
        return dict(PLAIN)
    return dict(NB201_CPU if space == 'nb201' else CPU_RECIPE)


def resolve(model_cfg, fast_compile: bool = False, backend: str | None = None,
            optimized: bool | None = None) -> dict:
    """`model_cfg`'s FIELDS with each 'auto' / None replaced by `choose` for this process's backend and
    compile mode (`optimized` None: XLA optimises unless `fast_compile` or jax_disable_most_optimizations)."""
    if optimized is None:
        optimized = not (fast_compile or jax.config.read('jax_disable_most_optimizations'))
    chosen = choose(backend or jax.default_backend(), optimized, model_cfg.get('space', 'darts'))
    return {f: chosen[f] if model_cfg[f] in ('auto', None) else model_cfg[f] for f in FIELDS}
