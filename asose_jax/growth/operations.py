"""Function-preserving growth of a search network: pytree surgery on (spec, variables, opt states).

Every operation maps (spec, variables, opt_states, key) -> Grown(spec', variables', opt_states',
event). The new network computes the same eval-mode logits (checked numerically by the tests and
by the growth phase); `prune` is the exception and reports its measured change instead. Each
operation states its change as a `remap` rule; `surgery.rebuild` fills the new leaves from it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from asose_jax.growth.surgery import (ChannelMap, Grown, Path, Transfer, carry_opt_state, cell_index, flat_fresh,
                                      flatten, rebuild, rep, rep_in)
from asose_jax.growth.nb201_width import widen_nb201
from asose_jax.space.genotype import PRIMITIVES
from asose_jax.space.network import SqueezeExcite, count_params, init_cell_variables
from asose_jax.space.ops import make_op
from asose_jax.space.spec import CellSpec, NetworkSpec

KINDS = ('depth', 'width', 'branch', 'attention', 'regularise', 'prune')
SPACE_KINDS = {'darts': KINDS, 'nb201': ('width', 'regularise', 'prune')}  # what each space's networks can grow


class GrowthSkipped(Exception):
    """A growth that cannot or must not happen (a cap, nothing left to add); the caller logs it."""


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
        parsed = cell_index(path[root]) if len(path) > root else None
        if parsed is None:
            return Transfer(path)
        i, rest = parsed
        if i == pos:
            return None
        old_i = i - 1 if i > pos else i
        return Transfer(path[:root] + (f'cell{old_i}{rest}',) + path[root + 1:])

    event = {'kind': 'depth', 'stage': stage, 'position': pos, 'C': new_cell.C, 'cells_after': new_spec.layers}
    return rebuild(new_spec, variables, opt_states, txs, remap, event,
                   flat_fresh(init_cell_variables(new_spec, pos, key)))


# ----------------------------------------------------------------------------- widen (Net2Wider)

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
    if spec.space == 'nb201':
        C = next(c.C for c, level in zip(spec.cells, levels) if level == stage)
        return widen_nb201(spec, variables, opt_states, txs=txs, stage=stage, C_new=widened_C(C, factor), factor=factor)
    cell_maps, cells = _widened_cells(spec, stage, factor)
    new_spec = dataclasses.replace(spec, cells=tuple(cells))
    w = _channel_flow(spec, cell_maps)

    def remap(path: Path) -> Transfer:
        return Transfer(path, _widen_leaf_fn(w, path))

    event = {'kind': 'width', 'stage': stage, 'factor': factor,
             'C_before': sorted({spec.cells[i].C for i, l in enumerate(levels) if l == stage}),
             'C_after': sorted({cells[i].C for i, l in enumerate(levels) if l == stage})}
    return rebuild(new_spec, variables, opt_states, txs, remap, event)


def _widened_cells(spec: NetworkSpec, stage: int, factor: float) -> tuple[dict, list]:
    """Each cell's channel map (identity outside `stage`) and its new spec: the maps drive every leaf."""
    cell_maps, cells = {}, []
    for i, (c, level) in enumerate(zip(spec.cells, spec.levels)):
        if level == stage:
            if c.C % 2:
                raise GrowthSkipped(f'widen: cell {i} has odd C={c.C}')
            cell_maps[i] = ChannelMap.widen(c.C, widened_C(c.C, factor))
            cells.append(dataclasses.replace(c, C=len(cell_maps[i].idx)))
        else:
            cell_maps[i] = ChannelMap.identity(c.C)
            cells.append(c)
    return cell_maps, cells


@dataclasses.dataclass(frozen=True)
class _Widening:
    """The channel maps a consumer's leaves need: its cell's, the cell's two inputs', its output's."""

    cells: dict[int, ChannelMap]
    inputs: dict[int, tuple[ChannelMap, ChannelMap]]
    outputs: dict[int, ChannelMap]
    final: ChannelMap  # the classifier's input


def _channel_flow(spec: NetworkSpec, cell_maps: dict) -> _Widening:
    """Follows SearchNetwork's chain of cells (a residual one does not shift it): inputs map as their producers."""
    mult = spec.multiplier
    s0 = s1 = ChannelMap.identity(spec.stem_C)
    inputs, outputs = {}, {}
    for i, c in enumerate(spec.cells):
        inputs[i] = (s0, s1)
        outputs[i] = cell_maps[i].tile(mult)
        if not c.residual:
            s0, s1 = s1, outputs[i]
    return _Widening(cell_maps, inputs, outputs, s1)


def _widen_cell_leaf(w: _Widening, i: int, sub: Path, x):
    """A leaf inside cell i: preprocessing reads the cell's inputs, edge ops read and write its nodes."""
    g = w.cells[i]
    part, leaf, parent = sub[0], sub[-1], sub[-2] if len(sub) > 1 else ''
    if part in ('pre0', 'pre1'):
        m_in = w.inputs[i][0 if part == 'pre0' else 1]
        if leaf == 'kernel':
            out = g.half(0) if parent == 'conv1' else g.half(1) if parent == 'conv2' else g.idx
            return rep(rep_in(x, -2, m_in), -1, out)
        return rep(x, -1, g.idx)                         # BN statistics
    if part in ('input_edges', 'node_edges'):
        if leaf.startswith('gate_'):
            return x                                     # one scalar per edge
        if leaf == 'kernel' and parent == 'dw':
            return rep(x, -1, g.idx)
        if leaf == 'kernel':                             # pointwise / FactorizedReduce convs
            out = g.half(0) if parent == 'conv1' else g.half(1) if parent == 'conv2' else g.idx
            return rep(rep_in(x, -2, g), -1, out)
        return rep(x, -1, g.idx)                         # BN statistics
    raise AssertionError(f'widen: unexpected leaf {sub}')


def _widen_leaf_fn(w: _Widening, path: Path) -> Callable:
    """old leaf -> new leaf for any variable path: cells, their gates and SE, the classifier."""
    root = 2 if path[0] == 'params' else 1
    if path[0] == 'params' and path[1] == 'arch':
        return lambda x: x
    name, sub = path[root], path[root + 1:]
    parsed = cell_index(name)
    if parsed is not None:
        i, rest = parsed
        if rest == '':
            return lambda x: _widen_cell_leaf(w, i, sub, x)
        if rest == '_gate':
            return lambda x: rep(x, -1, w.outputs[i].idx)
        if rest == '_se':
            if sub == ('fc1', 'kernel'):
                return lambda x: rep_in(x, 0, w.outputs[i])
            if sub[0] == 'fc2':
                return lambda x: rep(x, -1, w.outputs[i].idx)
            return lambda x: x
    if name == 'classifier' and sub == ('kernel',):
        return lambda x: rep_in(x, 0, w.final)
    return lambda x: x                                   # stem, classifier bias, fc1 bias


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
                for path, leaf in flatten(v.get(col, {})).items():
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
    fresh = {('params', 'weights', f'cell{cell}_se') + p: x for p, x in flatten(se).items()}
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
    flat = flatten(variables['params']['weights'])
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
    if kind not in SPACE_KINDS[spec.space]:
        raise GrowthSkipped(f'{kind}: a {spec.space} network grows only by {list(SPACE_KINDS[spec.space])}')
    return OPERATIONS[kind](spec, variables, opt_states, key, txs=txs, **options)
