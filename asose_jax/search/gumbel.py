"""Gumbel-Softmax sampling of edge weights and the temperature schedule; pure functions."""
from __future__ import annotations

import jax
import jax.numpy as jnp

SCHEDULES = ('exponential', 'linear', 'constant')


def sample(key, logits, tau, hard: bool):
    """Samples edge weights from `logits` [..., ops].

    soft: softmax((logits + g) / tau). hard: the one-hot of the argmax, with the soft sample's
    gradient (straight-through), so a single-path forward still trains every logit of the edge.
    """
    g = jax.random.gumbel(key, logits.shape, logits.dtype)
    soft = jax.nn.softmax((logits + g) / tau, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
    return one_hot + soft - jax.lax.stop_gradient(soft)


def sample_tree(key, logits: dict, tau, hard: bool) -> dict:
    """`sample` for every cell type, each with its own key (cell types in sorted order)."""
    names = sorted(logits)
    keys = jax.random.split(key, len(names))
    return {n: sample(k, logits[n], tau, hard) for n, k in zip(names, keys)}


def temperature(step, total_steps: int, tau_max: float, tau_min: float, schedule: str = 'exponential'):
    """tau(step) from tau_max at step 0 to tau_min at total_steps (held after)."""
    if schedule not in SCHEDULES:
        raise ValueError(f'gumbel schedule {schedule!r}; allowed: {SCHEDULES}')
    if schedule == 'constant':
        return jnp.asarray(tau_max, jnp.float32)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    if schedule == 'linear':
        return tau_max + (tau_min - tau_max) * frac
    return tau_max * (tau_min / tau_max) ** frac
