"""Data parallel over all devices with `jax.sharding`: the batch is split on a 'data' mesh axis, the
train state (weights, arch logits, BN statistics, both optimizer states) is replicated.

The steps need no change: the loss is a mean over the *global* batch, so under jit GSPMD inserts the
all-reduces itself; weight and arch gradients are global means and every device applies the same
update, so the alphas stay bitwise identical on every device. BatchNorm statistics are also
computed over the global batch (synchronised BN), which is why N devices reproduce one device.

Multi-host (several machines, each with its local devices): call `jax.distributed.initialize()`
(coordinator address, process count and id come from the cluster environment or arguments) at
start-up, before anything touches a device; then `make_mesh()` spans `jax.devices()`, i.e. every
device of every host. Each host feeds its own slice of the global batch with `shard_batch`, which
builds global arrays from process-local data (`jax.make_array_from_process_local_data`), and
evaluation metrics come back replicated. Everything else is unchanged.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from asose_jax.search.steps import Steps

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError('make_mesh: no devices given')
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _check_divisible(batch: dict, n: int) -> None:
    for k, v in batch.items():
        if v.shape[0] % n:
            raise ValueError(f'batch[{k!r}] has {v.shape[0]} rows, not divisible by the {n} devices of the '
                             f"'{DATA_AXIS}' mesh axis: choose a batch size that is a multiple of {n}")


def shard_batch(mesh: Mesh, batch: dict) -> dict:
    """Splits every leaf of `batch` along its first axis over the 'data' axis.

    Single process: `batch` is the global batch. Multi-host: each process passes its local part.
    """
    sharding = data_sharding(mesh)
    if jax.process_count() > 1:
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
    _check_divisible(batch, mesh.size)
    return jax.device_put(batch, sharding)


def replicate(mesh: Mesh, tree):
    """Places a full copy of `tree` (a TrainState, keys, ...) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def _unjitted(fn):
    inner = getattr(fn, '__wrapped__', None)
    if inner is None:
        raise TypeError(f'{fn!r} is not a jax.jit-wrapped step (no __wrapped__)')
    return inner


def parallelize_steps(steps: Steps, mesh: Mesh) -> Steps:
    """Re-jits the train/eval steps with the state replicated and the batch sharded on 'data'.

    The returned steps take the same arguments; they shard the batch themselves (so the data
    pipeline can keep producing ordinary arrays) and expect a state from `replicate`.
    """
    repl, data = replicated(mesh), data_sharding(mesh)

    def rejit(fn, donate: bool):
        jitted = jax.jit(_unjitted(fn), in_shardings=(repl, data, repl), out_shardings=repl,
                         donate_argnums=(0,) if donate else ())

        def run(state, batch, key):
            return jitted(state, shard_batch(mesh, batch), key)
        run.jitted = jitted
        return run

    if steps.eval_jit is None:
        raise TypeError('parallelize_steps needs Steps built by steps.make_*_steps (eval_jit set)')
    ev = jax.jit(_unjitted(steps.eval_jit), in_shardings=(repl, data), out_shardings=repl)
    return dataclasses.replace(
        steps,
        weight_step=rejit(steps.weight_step, True),
        arch_step=rejit(steps.arch_step, True) if steps.arch_step is not None else None,
        eval_step=lambda state, batch, key=None: (state, ev(state, shard_batch(mesh, batch))))


def maybe_parallel(config, steps: Steps, state):
    """(steps, state) sharded over all local devices when `config.parallel.data_parallel`, else as given."""
    if not config.parallel.data_parallel:
        return steps, state
    mesh = make_mesh()
    return parallelize_steps(steps, mesh), replicate(mesh, state)


def maybe_replicate(config, state):
    """`state` placed as maybe_parallel's steps expect it (a rolled-back or re-scaled state)."""
    return replicate(make_mesh(), state) if config.parallel.data_parallel else state
