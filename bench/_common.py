"""Shared pieces of the benchmarks: shapes, the machine line, JAX state/step construction, timing."""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from asose_jax.search.optim import ArchOptConfig, WeightOptConfig, arch_transform, weight_transform
from asose_jax.search.steps import SearchStepConfig, make_search_steps
from asose_jax.search.train_state import create_train_state
from asose_jax.space.network import init_search_variables
from asose_jax.space.spec import NetworkSpec

# name: (C, cells, batch, image size)
SHAPES = {
    'tiny': (4, 3, 8, 8),       # CI / script validation only
    'smoke': (4, 3, 32, 16),
    'smoke32': (4, 3, 32, 32),
    'darts': (16, 8, 64, 32),   # DARTS search shape
}


def shape_spec(name: str) -> tuple[NetworkSpec, int, int]:
    if name not in SHAPES:
        raise SystemExit(f'unknown shape {name!r}; allowed: {sorted(SHAPES)}')
    C, layers, batch, size = SHAPES[name]
    return NetworkSpec.darts(C=C, layers=layers), batch, size


def depthwise_for(choice: str) -> str:
    """Resolves --depthwise 'auto': the shifted multiply-adds on the CPU (faster there than XLA's grouped
    conv; with its custom VJP it needs about the conv's memory, `bench/bench_op_memory.py`), the grouped
    conv elsewhere."""
    if choice != 'auto':
        return choice
    return 'shift' if jax.default_backend() == 'cpu' else 'conv'


def machine() -> str:
    cpu = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
    except (OSError, StopIteration):
        pass
    dev = jax.devices()[0]
    return (f'CPU: {cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on {jax.default_backend()} '
            f'({dev.device_kind}, {jax.device_count()} device(s))')


# the torch twin's memory formats: NCHW, and NHWC strides (faster for torch's CPU convolutions)
TORCH_FORMATS = ('contiguous', 'channels_last')


def torch_formats(text: str) -> list[str]:
    """Parses a --torch-formats value (comma-separated TORCH_FORMATS)."""
    formats = [f for f in text.split(',') if f]
    bad = set(formats) - set(TORCH_FORMATS)
    if bad or not formats:
        raise SystemExit(f'--torch-formats {text!r}: one or more of {", ".join(TORCH_FORMATS)}')
    return formats

# remat: per cell; remat_branch: per candidate op; unroll: the cells' edge scans unrolled; +mat_grads: with
# model.materialize_edge_grads
VARIANTS = ('fp32', 'bf16', 'remat', 'remat_branch', 'unroll', 'remat_branch+mat_grads')


def step_config(path: str, variant: str, depthwise: str, pointwise: str = 'conv') -> SearchStepConfig:
    """path: soft (full mixture, soft Gumbel) | hard (single path, lax.switch) | hardmix (hard ST, mixture);
    pointwise: the 1x1 convs as nn.Conv ('conv') or matmuls ('dot', model.pointwise_impl; make_search_steps
    checks it)."""
    if path not in ('soft', 'hard', 'hardmix'):
        raise SystemExit(f'unknown path {path!r}; allowed: soft, hard, hardmix')
    if variant not in VARIANTS:
        raise SystemExit(f'unknown variant {variant!r}; allowed: {", ".join(VARIANTS)}')
    return SearchStepConfig(sampling='gumbel', hard=path != 'soft', single_path=path == 'hard', tau_max=5.0,
                            tau_min=1.0, tau_steps=1000, depthwise_impl=depthwise, pointwise_impl=pointwise,
                            compute_dtype='bfloat16' if variant == 'bf16' else 'float32', remat=variant == 'remat',
                            remat_branch=variant.startswith('remat_branch'), unroll_edges=variant == 'unroll',
                            materialize_edge_grads=variant.endswith('+mat_grads'))


def make_state(spec: NetworkSpec, size: int, seed: int = 0):
    wtx, atx = weight_transform(WeightOptConfig(), 1000), arch_transform(ArchOptConfig())
    variables = init_search_variables(spec, jax.random.key(seed), size)
    return variables, wtx, atx, create_train_state(variables, wtx, atx)


def batch(batch_size: int, size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {'image': jnp.asarray(rng.integers(0, 256, (batch_size, size, size, 3), np.uint8)),
            'label': jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32))}


@dataclasses.dataclass
class Compiled:
    fn: object
    compile_s: float  # trace + lower + XLA
    temp_mb: float
    total_mb: float
    trace_s: float    # Python tracing to a jaxpr
    lower_s: float    # jaxpr to StableHLO
    xla_s: float      # XLA compile, or a load from the persistent cache


def compile_step(jitted, *args) -> Compiled:
    """AOT trace + lower + compile, each timed; memory from compiled.memory_analysis() (None on some backends)."""
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    temp = total = float('nan')
    mem = compiled.memory_analysis()
    if mem is not None:
        mb = 1 / 2 ** 20
        temp = mem.temp_size_in_bytes * mb
        total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                 - mem.alias_size_in_bytes) * mb
    return Compiled(compiled, t3 - t0, temp, total, t1 - t0, t2 - t1, t3 - t2)


def search_step(spec, cfg, wtx, atx, which: str):
    steps = make_search_steps(spec, cfg, wtx, atx)
    return steps.weight_step if which == 'weight' else steps.arch_step


def median(xs):
    return statistics.median(xs) if xs else float('nan')


def report(lines: list[str], out: str | None) -> None:
    """Prints a result table and appends it to `out` (e.g. bench/RESULTS.md) when given."""
    text = '\n'.join(lines) + '\n'
    print(text)
    if out:
        with open(out, 'a') as f:
            f.write('\n' + text)
