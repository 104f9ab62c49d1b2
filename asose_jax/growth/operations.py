"""Function-preserving growth of a search network: pytree surgery on (spec, variables, opt states).

Every operation maps (spec, variables, opt_states, key) -> Grown(spec', variables', opt_states',
event). The new network computes the same eval-mode logits (checked numerically by the tests and
by the growth phase); `prune` is the exception and reports its measured change instead.

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

from asose_jax.space.genotype import PRIMITIVES
from asose_jax.space.network import (CELL_TYPES, SearchNetwork, SqueezeExcite, count_params, init_cell_variables,
                               uniform_edge_weights)
from asose_jax.space.ops import make_op
from asose_jax.space.spec import CellSpec, NetworkSpec

KINDS = ('depth', 'width', 'branch', 'attention', 'regularise', 'prune')
Path = tuple[str, ...]


class GrowthSkipped(Exception):
    """A growth that cannot or must not happen (a cap, nothing left to add); the caller logs it."""


@dataclasses.dataclass(frozen=True)
class Transfer:
    """New leaf = fn(old leaf at old_path); optimizer moments use moment_fn (default: fn)."""

    old_path: Path
    fn: Callable = lambda x: x
    moment_fn: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Grown:
    spec: NetworkSpec
    variables: dict
    opt_states: tuple  # (weight_opt_state, arch_opt_state)
    event: dict


# ----------------------------------------------------------------------------- leaf plumbing

def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree) if tree else {}


def _variables_flat(variables: dict) -> dict:
    """{('params', 'weights', ...): leaf, ('batch_stats', ...): leaf}."""
    return _flat({'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})})


def _structure(spec: NetworkSpec) -> dict:
    """Shapes and dtypes of a network's variables (traced with eval_shape: nothing is compiled)."""
    model = SearchNetwork(spec)
    n_red = sum(c.reduction for c in spec.cells)
    x = jax.ShapeDtypeStruct((1, 2 ** (n_red + 3), 2 ** (n_red + 3), 3), jnp.float32)
    v = jax.eval_shape(lambda k, x: model.init(k, x, uniform_edge_weights(spec), train=False), jax.random.key(0), x)
    arch = {t: jax.ShapeDtypeStruct((spec.num_edges, spec.num_ops), jnp.float32) for t in CELL_TYPES}
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


def _param_suffix(keypath) -> Path:
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
        suffix = _param_suffix(keypath)
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


def _flat_fresh(variables: dict) -> dict:
    """{'params': {...}, 'batch_stats': {...}} of network-level names -> flat full paths."""
    return _flat({'params': {'weights': variables['params']}, 'batch_stats': variables['batch_stats']})


# ----------------------------------------------------------------------------- structure helpers

def _cell_index(name: str) -> tuple[int, str] | None:
    """'cell12_gate' -> (12, '_gate'); 'cell3' -> (3, ''); other names -> None."""
    m = re.fullmatch(r'cell(\d+)(_gate|_se|)', name)
    return (int(m.group(1)), m.group(2)) if m else None


# ----------------------------------------------------------------------------- deepen

def deepen(spec: NetworkSpec, variables: dict, opt_states: tuple, key, *, txs: tuple, stage: int = -1) -> Grown:
    """Inserts a residual search cell at the end of `stage` (-1: the stage with the fewest cells,
    the deepest on ties). Its output enters c_{k-1} through a BN whose scale and bias start at zero,
    so the network's function is unchanged; it shares its cell type's arch logits."""
    levels = spec.levels
    stages = sorted(set(levels))
    if stage == -1:
        stage = min(stages, key=lambda s: (levels.count(s), -s))
    if stage not in stages:
        raise GrowthSkipped(f'deepen: no stage {stage}; stages are {stages}')
    pos = max(i for i, s in enumerate(levels) if s == stage) + 1
    producer = max(i for i in range(pos) if not spec.cells[i].residual)
    new_cell = CellSpec(C=spec.cells[producer].C, residual=True)
    new_spec = dataclasses.replace(spec, cells=spec.cells[:pos] + (new_cell,) + spec.cells[pos:])

    def remap(path: Path) -> Transfer | None:
        root = 2 if path[0] == 'params' else 1
        parsed = _cell_index(path[root]) if len(path) > root else None
        if parsed is None:
            return Transfer(path)
        i, rest = parsed
        if i == pos:
            return None
        old_i = i - 1 if i > pos else i
        return Transfer(path[:root] + (f'cell{old_i}{rest}',) + path[root + 1:])

    event = {'kind': 'depth', 'stage': stage, 'position': pos, 'C': new_cell.C, 'cells_after': new_spec.layers}
    return rebuild(new_spec, variables, opt_states, txs, remap, event,
                   _flat_fresh(init_cell_variables(new_spec, pos, key)))


# ----------------------------------------------------------------------------- widen (Net2Wider)

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

    @property
    def is_identity(self) -> bool:
        return len(self.idx) == len(self.count) and bool(np.all(self.idx == np.arange(len(self.idx))))


def _rep(x, axis: int, idx):
    return np.take(np.asarray(x), idx, axis=axis)


def _rep_in(x, axis: int, m: ChannelMap):
    """Replicate an input axis and divide by the copy count: the consumer's sum is unchanged."""
    x = np.asarray(x)
    shape = [1] * x.ndim
    shape[axis] = -1
    return np.take(x / m.count.reshape(shape), m.idx, axis=axis)


def widened_C(C: int, factor: float) -> int:
    """C * factor rounded up to an even count (FactorizedReduce halves it), at least C + 2."""
    return max(int(np.ceil(C * factor / 2.0)) * 2, C + 2)


def widen(spec: NetworkSpec, variables: dict, opt_states: tuple, key, *, txs: tuple, stage: int = -1,
          factor: float = 1.5) -> Grown:
    """Net2Wider on every cell of `stage` (-1: the narrowest stage relative to DARTS' doubling,
    the earliest on ties): node channels are replicated (BN statistics too), and every consumer
    (edge ops, the next cells' preprocessing and FactorizedReduce, the classifier) divides its
    incoming weights by the replication count."""
    levels = spec.levels
    stages = sorted(set(levels))
    if stage == -1:
        stage = min(stages, key=lambda s: (max(c.C for c, l in zip(spec.cells, levels) if l == s) / 2 ** s, s))
    if stage not in stages:
        raise GrowthSkipped(f'widen: no stage {stage}; stages are {stages}')
    cell_maps, cells = {}, []
    for i, (c, level) in enumerate(zip(spec.cells, levels)):
        if level == stage:
            if c.C % 2:
                raise GrowthSkipped(f'widen: cell {i} has odd C={c.C}')
            cell_maps[i] = ChannelMap.widen(c.C, widened_C(c.C, factor))
            cells.append(dataclasses.replace(c, C=len(cell_maps[i].idx)))
        else:
            cell_maps[i] = ChannelMap.identity(c.C)
            cells.append(c)
    new_spec = dataclasses.replace(spec, cells=tuple(cells))

    # the channel maps of each cell's two inputs and of its output, following SearchNetwork's chain
    mult = spec.multiplier
    s0 = s1 = ChannelMap.identity(spec.stem_C)
    inputs, outputs = {}, {}
    for i, c in enumerate(spec.cells):
        inputs[i] = (s0, s1)
        outputs[i] = cell_maps[i].tile(mult)
        if not c.residual:
            s0, s1 = s1, outputs[i]
    final = s1

    def cell_leaf(i: int, sub: Path, x):
        g = cell_maps[i]
        part, leaf, parent = sub[0], sub[-1], sub[-2] if len(sub) > 1 else ''
        if part in ('pre0', 'pre1'):
            m_in = inputs[i][0 if part == 'pre0' else 1]
            if leaf == 'kernel':
                out = g.half(0) if parent == 'conv1' else g.half(1) if parent == 'conv2' else g.idx
                return _rep(_rep_in(x, -2, m_in), -1, out)
            return _rep(x, -1, g.idx)                                # BN statistics
        if part in ('input_edges', 'node_edges'):
            if leaf.startswith('gate_'):
                return x                                             # one scalar per edge
            if leaf == 'kernel' and parent == 'dw':
                return _rep(x, -1, g.idx)
            if leaf == 'kernel':                                     # pointwise / FactorizedReduce convs
                out = g.half(0) if parent == 'conv1' else g.half(1) if parent == 'conv2' else g.idx
                return _rep(_rep_in(x, -2, g), -1, out)
            return _rep(x, -1, g.idx)                                # BN statistics
        raise AssertionError(f'widen: unexpected leaf {sub}')

    def leaf_fn(path: Path) -> Callable:
        root = 2 if path[0] == 'params' else 1
        if path[0] == 'params' and path[1] == 'arch':
            return lambda x: x
        name, sub = path[root], path[root + 1:]
        parsed = _cell_index(name)
        if parsed is not None:
            i, rest = parsed
            if rest == '':
                return lambda x: cell_leaf(i, sub, x)
            if rest == '_gate':
                return lambda x: _rep(x, -1, outputs[i].idx)
            if rest == '_se':
                if sub == ('fc1', 'kernel'):
                    return lambda x: _rep_in(x, 0, outputs[i])
                if sub[0] == 'fc2':
                    return lambda x: _rep(x, -1, outputs[i].idx)
                return lambda x: x
        if name == 'classifier' and sub == ('kernel',):
            return lambda x: _rep_in(x, 0, final)
        return lambda x: x                                           # stem, classifier bias, fc1 bias

    def remap(path: Path) -> Transfer:
        return Transfer(path, leaf_fn(path))

    event = {'kind': 'width', 'stage': stage, 'factor': factor,
             'C_before': sorted({spec.cells[i].C for i, l in enumerate(levels) if l == stage}),
             'C_after': sorted({cells[i].C for i, l in enumerate(levels) if l == stage})}
    return rebuild(new_spec, variables, opt_states, txs, remap, event)


# ----------------------------------------------------------------------------- add_branch

def add_branch(spec: NetworkSpec, variables: dict, opt_states: tuple, key, *, txs: tuple, op: str = 'auto',
               init_weight: float = 1e-7) -> Grown:
    """Adds candidate op `op` ('auto': the first DARTS primitive not yet in the space) to every
    mixed op. Its output is scaled by a per-edge gate that starts at zero, and its arch logit
    column starts at logsumexp(row) + log(init_weight), so its softmax weight is ~init_weight
    (and argmax never picks it): the mixture, softmax or argmax, is unchanged."""
    if op == 'auto':
        missing = [p for p in PRIMITIVES if p not in spec.primitives]
        if not missing:
            raise GrowthSkipped('add_branch: every primitive is already a candidate')
        op = missing[0]
    if op not in PRIMITIVES:
        raise GrowthSkipped(f'add_branch: unknown op {op!r}; allowed: {list(PRIMITIVES)}')
    if op in spec.primitives:
        raise GrowthSkipped(f'add_branch: {op} is already a candidate')
    if not 0.0 < init_weight < 1.0:
        raise GrowthSkipped(f'add_branch: init_weight={init_weight} must be in (0, 1)')
    new_spec = dataclasses.replace(spec, primitives=spec.primitives + (op,), branch_ops=spec.branch_ops + (op,))

    def new_column(a):
        a = np.asarray(a)
        lse = jax.scipy.special.logsumexp(a, axis=-1, keepdims=True)
        return np.concatenate([a, np.asarray(lse) + np.log(init_weight)], axis=-1)

    def zero_column(m):
        m = np.asarray(m)
        return np.concatenate([m, np.zeros(m.shape[:-1] + (1,), m.dtype)], axis=-1)

    def remap(path: Path) -> Transfer | None:
        if path[:2] == ('params', 'arch'):
            return Transfer(path, new_column, zero_column)
        if op in path or f'gate_{op}' in path:
            return None
        return Transfer(path)

    event = {'kind': 'branch', 'op': op, 'init_weight': init_weight}
    return rebuild(new_spec, variables, opt_states, txs, remap, event, _fresh_branch(new_spec, op, key))


def _fresh_branch(spec: NetworkSpec, op: str, key) -> dict:
    """Initial values of op `op` on every edge of every cell (stacked per edge scan), gates zero."""
    fresh = {}
    n_in = 2 * spec.steps
    n_node = spec.num_edges - n_in
    for i, cell in enumerate(spec.cells):
        for scan, n, stride in (('input_edges', n_in, 2 if cell.reduction else 1), ('node_edges', n_node, 1)):
            if n == 0:
                continue
            module = make_op(op, cell.C, stride, affine=False, search=True)
            x = jnp.zeros((1, 8, 8, cell.C))
            keys = jax.random.split(jax.random.fold_in(key, 2 * i + (scan == 'node_edges')), n)
            v = jax.vmap(lambda k: module.init(k, x, False))(keys)
            prefix = (f'cell{i}', scan, 'mixed')
            for col, root in (('params', ('params', 'weights')), ('batch_stats', ('batch_stats',))):
                for path, leaf in _flat(v.get(col, {})).items():
                    fresh[root + prefix + (op,) + path] = leaf
            fresh[('params', 'weights') + prefix + (f'gate_{op}',)] = jnp.zeros((n,))
    return fresh


# ----------------------------------------------------------------------------- attention, regularise

def add_attention(spec: NetworkSpec, variables: dict, opt_states: tuple, key, *, txs: tuple,
                  cell: int = -1) -> Grown:
    """Puts a squeeze-excite gate (identity at init: 2*sigmoid of a zero-initialised layer) on
    the output of `cell` (-1: the last cell without one)."""
    free = [i for i, c in enumerate(spec.cells) if not c.attention]
    if cell == -1:
        if not free:
            raise GrowthSkipped('attention: every cell already has a gate')
        cell = free[-1]
    if cell not in free:
        raise GrowthSkipped(f'attention: cell {cell} does not exist or already has a gate')
    c = spec.cells[cell]
    hidden = max(spec.multiplier * c.C // 4, 1)
    cells = spec.cells[:cell] + (dataclasses.replace(c, attention=hidden),) + spec.cells[cell + 1:]
    new_spec = dataclasses.replace(spec, cells=cells)

    def remap(path: Path) -> Transfer | None:
        return None if f'cell{cell}_se' in path else Transfer(path)

    event = {'kind': 'attention', 'cell': cell, 'hidden': hidden}
    se = SqueezeExcite(hidden).init(key, jnp.zeros((1, 1, 1, spec.multiplier * c.C)))['params']
    fresh = {('params', 'weights', f'cell{cell}_se') + p: x for p, x in _flat(se).items()}
    return rebuild(new_spec, variables, opt_states, txs, remap, event, fresh)


def regularise(spec: NetworkSpec, variables: dict, opt_states: tuple, key, *, txs: tuple,
               drop_path: float = 0.1, dropout: float = 0.1) -> Grown:
    """Turns on per-edge drop-path and dropout before the classifier (identity in eval mode)."""
    if (drop_path, dropout) == (spec.drop_path, spec.dropout):
        raise GrowthSkipped(f'regularise: drop_path={drop_path}, dropout={dropout} already set')
    new_spec = dataclasses.replace(spec, drop_path=drop_path, dropout=dropout)
    event = {'kind': 'regularise', 'drop_path': drop_path, 'dropout': dropout}
    return Grown(new_spec.with_growth(event), variables, opt_states,
                 {**event, 'params_before': count_params(variables['params']['weights']),
                  'params_after': count_params(variables['params']['weights'])})


# ----------------------------------------------------------------------------- prune

def prune(spec: NetworkSpec, variables: dict, opt_states: tuple, key, *, txs: tuple,
          fraction: float = 0.2) -> Grown:
    """Zeroes the `fraction` of conv/dense kernel weights with the smallest magnitude (one global
    threshold) and their momentum. Not function-preserving: the growth phase measures the change.
    One-shot: no mask is kept, so pruned weights may grow back in later training."""
    if not 0.0 < fraction < 1.0:
        raise GrowthSkipped(f'prune: fraction={fraction} must be in (0, 1)')
    flat = _flat(variables['params']['weights'])
    kernels = {p: np.asarray(v) for p, v in flat.items() if p[-1] == 'kernel'}
    magnitudes = np.concatenate([np.abs(v).ravel() for v in kernels.values()])
    threshold = np.quantile(magnitudes, fraction)
    masks = {('params', 'weights') + p: np.abs(v) > threshold for p, v in kernels.items()}

    def remap(path: Path) -> Transfer:
        mask = masks.get(path)
        return Transfer(path) if mask is None else Transfer(path, lambda x, m=mask: np.asarray(x) * m)

    weights = traverse_util.unflatten_dict(
        {p: (np.asarray(v) * masks[('params', 'weights') + p] if ('params', 'weights') + p in masks else v)
         for p, v in flat.items()})
    new_vars = {'params': {**variables['params'], 'weights': jax.tree_util.tree_map(jnp.asarray, weights)},
                'batch_stats': variables['batch_stats']}
    new_opt = tuple(carry_opt_state(tx, st, new_vars['params'], remap) for tx, st in zip(txs, opt_states))
    zeroed = int(sum((~m).sum() for m in masks.values()))
    event = {'kind': 'prune', 'fraction': fraction, 'threshold': float(threshold), 'zeroed': zeroed,
             'params_before': count_params(variables['params']['weights']),
             'params_after': count_params(variables['params']['weights']) - zeroed}
    return Grown(spec.with_growth(event), new_vars, new_opt, event)


OPERATIONS = {'depth': deepen, 'width': widen, 'branch': add_branch, 'attention': add_attention,
              'regularise': regularise, 'prune': prune}


def grow(kind: str, spec: NetworkSpec, variables: dict, opt_states: tuple, key, *, txs: tuple, **options) -> Grown:
    """Dispatches to the operation `kind` (one of KINDS) with its options."""
    if kind not in OPERATIONS:
        raise ValueError(f'growth kind {kind!r}; allowed: {list(KINDS)}')
    return OPERATIONS[kind](spec, variables, opt_states, key, txs=txs, **options)

