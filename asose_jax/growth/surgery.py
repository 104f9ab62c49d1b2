"""Pytree surgery shared by the growth operations: a new spec's variables and optimizer states
filled leaf by leaf from the old ones, and the channel replication of Net2Wider.

How each leaf of the new network is filled is one rule, `remap(path) -> Transfer | None`: a
Transfer names the old leaf and the function that turns it into the new one (Net2Wider
replication, a renamed cell, an appended arch column); None means a new leaf, whose initial value
comes from initialising only the new part (one cell, one op, one gate: a small compile) for
parameters and batch statistics, or zero for optimizer moments. Counters and other
non-parameter optimizer leaves are carried over unchanged.

The optimizer transforms are passed in (`txs`) because the new optimizer state is built with
`tx.init(new_params)` and then filled: that keeps optax's own state layout the source of truth.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from asose_jax.space.network import count_params, search_network, uniform_edge_weights
from asose_jax.space.spec import NetworkSpec

Path = tuple[str, ...]

@dataclasses.dataclass(frozen=True)
class Transfer:
    """New leaf = fn(old leaf at old_path); optimizer moments use moment_fn (default: fn)."""

    old_path: Path
    fn: Callable = lambda x: x
    moment_fn: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Grown:
    """What every growth operation returns: the grown network and its event line."""

    spec: NetworkSpec
    variables: dict
    opt_states: tuple  # (weight_opt_state, arch_opt_state)
    event: dict


# ----------------------------------------------------------------------------- leaf plumbing

def flatten(tree) -> dict:
    """{path tuple: leaf}; an empty or missing collection (no batch_stats) is {}."""
    return traverse_util.flatten_dict(tree) if tree else {}


def _variables_flat(variables: dict) -> dict:
    """{('params', 'weights', ...): leaf, ('batch_stats', ...): leaf}."""
    return flatten({'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})})


def _structure(spec: NetworkSpec) -> dict:
    """Shapes and dtypes of a network's variables (traced with eval_shape: nothing is compiled)."""
    model = search_network(spec)
    n_red = sum(c.reduction for c in spec.cells)
    x = jax.ShapeDtypeStruct((1, 2 ** (n_red + 3), 2 ** (n_red + 3), 3), jnp.float32)
    v = jax.eval_shape(lambda k, x: model.init(k, x, uniform_edge_weights(spec), train=False), jax.random.key(0), x)
    arch = {t: jax.ShapeDtypeStruct((spec.num_edges, spec.num_ops), jnp.float32) for t in spec.cell_types}
    return {'params': {'weights': v['params'], 'arch': arch}, 'batch_stats': v.get('batch_stats', {})}


def _fill_variables(shapes: dict, old: dict, remap: Callable[[Path], Transfer | None], fresh: dict) -> dict:
    """New variables: each leaf from the old ones via remap, or from `fresh` (flat) when new."""
    old_flat = _variables_flat(old)
    new_flat = {}
    for path, sds in _variables_flat(shapes).items():
        t = remap(path)
        if t is None:
            if path not in fresh:
                raise AssertionError(f'growth: new leaf {"/".join(path)} has no initial value')
            value = fresh[path]
        else:
            value = t.fn(old_flat[t.old_path])
        new_flat[path] = jnp.asarray(value, sds.dtype)
        if new_flat[path].shape != sds.shape:
            raise AssertionError(f'growth produced {new_flat[path].shape} for {"/".join(path)}, expected {sds.shape}')
    tree = traverse_util.unflatten_dict(new_flat)
    return {'params': tree['params'], 'batch_stats': tree.get('batch_stats', {})}


def param_suffix(keypath) -> Path:
    """The trailing dict keys of an optimizer-state leaf path: the parameter path it mirrors."""
    suffix = []
    for k in reversed(keypath):
        if not isinstance(k, jax.tree_util.DictKey):
            break
        suffix.append(str(k.key))
    return tuple(reversed(suffix))


def carry_opt_state(tx: optax.GradientTransformation, old_state, new_params: dict,
                    remap: Callable[[Path], Transfer | None]):
    """The state tx.init(new_params) would have, every parameter-shaped leaf filled from the old
    state via remap (moments of unchanged leaves carried, new leaves zero) and every other leaf
    (step counts) carried. Built from eval_shape, so nothing is dispatched leaf by leaf."""
    shapes = jax.eval_shape(tx.init, new_params)
    old_leaves = dict(jax.tree_util.tree_flatten_with_path(old_state)[0])

    def fill(keypath, sds):
        suffix = param_suffix(keypath)
        if suffix and suffix[0] in ('weights', 'arch'):
            t = remap(('params',) + suffix)
            if t is None:
                return jnp.zeros(sds.shape, sds.dtype)
            prefix = keypath[:len(keypath) - len(suffix)]
            old = old_leaves[prefix + tuple(jax.tree_util.DictKey(k) for k in t.old_path[1:])]
            new = jnp.asarray((t.moment_fn or t.fn)(old), sds.dtype)
            if new.shape != sds.shape:
                raise AssertionError(f'optimizer leaf {jax.tree_util.keystr(keypath)}: {new.shape} != {sds.shape}')
            return new
        old = old_leaves.get(keypath)
        return old if old is not None and np.shape(old) == sds.shape else jnp.zeros(sds.shape, sds.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def rebuild(new_spec: NetworkSpec, variables: dict, opt_states: tuple, txs: tuple,
            remap: Callable[[Path], Transfer | None], event: dict, fresh: dict | None = None) -> Grown:
    """The new spec's variables and optimizer states, filled from the old ones by remap; `fresh`
    (flat {path: value}) holds the initial values of new leaves."""
    new_vars = _fill_variables(_structure(new_spec), variables, remap, fresh or {})
    new_opt = tuple(carry_opt_state(tx, st, new_vars['params'], remap) for tx, st in zip(txs, opt_states))
    event = {**event, 'params_before': count_params(variables['params']['weights']),
             'params_after': count_params(new_vars['params']['weights'])}
    return Grown(new_spec.with_growth(event), new_vars, new_opt, event)


def flat_fresh(variables: dict) -> dict:
    """{'params': {...}, 'batch_stats': {...}} of network-level names -> flat full paths."""
    return flatten({'params': {'weights': variables['params']}, 'batch_stats': variables['batch_stats']})


# ----------------------------------------------------------------------------- structure helpers

def cell_index(name: str) -> tuple[int, str] | None:
    """'cell12_gate' -> (12, '_gate'); 'cell3' -> (3, ''); other names -> None."""
    m = re.fullmatch(r'cell(\d+)(_gate|_se|)', name)
    return (int(m.group(1)), m.group(2)) if m else None


# ----------------------------------------------------------------------------- Net2Wider channel maps

@dataclasses.dataclass(frozen=True)
class ChannelMap:
    """new channel j copies old channel idx[j]; count[c] copies of old channel c exist."""

    idx: np.ndarray
    count: np.ndarray

    @classmethod
    def identity(cls, n: int) -> 'ChannelMap':
        return cls(np.arange(n), np.ones(n, np.int64))

    @classmethod
    def widen(cls, C: int, C_new: int) -> 'ChannelMap':
        """Replication that keeps each half within its half, so FactorizedReduce's two convs
        (first half, second half of the channels) stay separable."""
        h, hn = C // 2, C_new // 2
        idx = np.concatenate([np.arange(hn) % h, h + np.arange(C_new - hn) % (C - h)])
        return cls(idx, np.bincount(idx, minlength=C))

    def tile(self, times: int) -> 'ChannelMap':
        """The map of `times` concatenated blocks (a cell output concatenates its nodes)."""
        C = len(self.count)
        return ChannelMap(np.concatenate([k * C + self.idx for k in range(times)]), np.tile(self.count, times))

    def half(self, which: int) -> np.ndarray:
        n, C = len(self.idx), len(self.count)
        return self.idx[:n // 2] if which == 0 else self.idx[n // 2:] - C // 2


def rep(x, axis: int, idx):
    """Replicate an output axis: new channel j is old channel idx[j]."""
    return np.take(np.asarray(x), idx, axis=axis)


SHARE_SPREAD = 0.2  # copies of one channel take (1 -/+ SHARE_SPREAD) / count of its outgoing weights (2 copies)


def shares(m: ChannelMap) -> np.ndarray:
    """Each new channel's share of its old channel's outgoing weights: the shares of one channel's copies
    sum to 1 (so a consumer's sum is unchanged) but differ, from (1 - SHARE_SPREAD) / count to
    (1 + SHARE_SPREAD) / count, alternating in direction from channel to channel. Equal shares would keep
    the copies identical through training (equal incoming weights, equal gradients): a widened network
    that computes, and can only ever compute, what the narrow one did (Net2Net breaks the symmetry with
    noise, which does not preserve the function exactly; unequal shares do)."""
    rank = np.zeros(len(m.idx))
    seen: dict = {}
    for j, c in enumerate(m.idx):
        rank[j] = seen.get(c, 0)
        seen[c] = rank[j] + 1
    k = m.count[m.idx].astype(np.float64)
    centred = np.where(k > 1, (2 * rank - (k - 1)) / np.maximum(k - 1, 1), 0.0)
    return (1 + SHARE_SPREAD * np.where(m.idx % 2, -centred, centred)) / k


def rep_in(x, axis: int, m: ChannelMap):
    """Replicate an input axis, each copy scaled by its share (`shares`): the consumer's sum is unchanged."""
    x = np.asarray(x)
    shape = [1] * x.ndim
    shape[axis] = -1
    return np.take(x, m.idx, axis=axis) * shares(m).reshape(shape).astype(x.dtype)

