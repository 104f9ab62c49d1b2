"""The training state pytree: everything a step reads and writes, nothing else."""
from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step counts weight steps; it keys the Gumbel/augmentation streams and the schedules."""

    step: jnp.ndarray
    params: dict  # {'weights': ..., 'arch': {'normal': [E, K], 'reduce': [E, K]} or {}}
    batch_stats: dict
    weight_opt_state: optax.OptState
    arch_opt_state: optax.OptState


def create_train_state(variables: dict, weight_tx: optax.GradientTransformation,
                       arch_tx: optax.GradientTransformation) -> TrainState:
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}),
                      weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(params))
