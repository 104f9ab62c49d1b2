"""The training state pytree: everything a step reads and writes, nothing else."""
from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import optax

# Runtime hyper-parameters, multipliers of the config's values, read by the steps as traced scalars: a
# monitor action or a NaN rollback changes them without compiling anything (run.loop.set_hparams).
HPARAMS = ('lr_scale', 'arch_lr_scale', 'arch_wd_scale', 'tau_scale')


def default_hparams() -> dict:
    return {k: jnp.ones((), jnp.float32) for k in HPARAMS}


@flax.struct.dataclass
class TrainState:
    """step counts weight steps; it keys the Gumbel/augmentation streams and the schedules."""

    step: jnp.ndarray
    params: dict  # {'weights': ..., 'arch': {'normal': [E, K], 'reduce': [E, K]} or {}}
    batch_stats: dict
    weight_opt_state: optax.OptState
    arch_opt_state: optax.OptState
    hparams: dict = flax.struct.field(default_factory=default_hparams)  # HPARAMS -> f32 scalar


def with_hparams(state: TrainState, **values: float) -> TrainState:
    """`state` with some HPARAMS set (new traced values of the same shape: no recompile)."""
    unknown = set(values) - set(HPARAMS)
    if unknown:
        raise ValueError(f'unknown hyper-parameters {sorted(unknown)}; allowed: {HPARAMS}')
    return state.replace(hparams={**state.hparams, **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()}})


def create_train_state(variables: dict, weight_tx: optax.GradientTransformation,
                       arch_tx: optax.GradientTransformation) -> TrainState:
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}),
                      weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(params))
