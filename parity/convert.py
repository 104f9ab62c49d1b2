"""Flax variables <-> torch state_dict of the spec's twin (torch_search_network), both directions, checked
against the spec.

Module paths map one to one ('/' -> '.'; growth's `cell{i}_se/fc1` Dense -> Linear, per-edge branch
gates `gate_<op>` [E] -> one scalar per edge), except the scanned edge stacks: Flax
`cell{i}/input_edges/mixed/<op>/...` and `cell{i}/node_edges/mixed/<op>/...` hold one slice per edge
along axis 0 in the order of `cells.input_edges` / `cells.node_edges`; torch has `cell{i}.edges.<d>.<op>...`
with d the DARTS edge index. NAS-Bench-201 (`nb201`): a stage `cells{a}_{b}/...` holds its b-a+1 cells along
axis 0; torch has `cells{a}_{b}.{j}....`. Leaves are renamed and re-laid-out by LEAF_TABLE.

BatchNorm statistics are copied as they are: both frameworks normalise eval-mode inputs by the stored
running variance, so equal stored values give equal eval outputs. The estimators differ only in the
train-time update (Flax: biased batch variance; stock torch: unbiased), which TorchSearchNetwork's
running_var='biased' mode reproduces; rescaling by n/(n-1) here would change eval logits instead.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from typing import Callable

import numpy as np
import torch

from asose_jax.space.cells import input_edges, node_edges
from asose_jax.space.spec import NetworkSpec
from parity.torch_network import torch_search_network


@dataclasses.dataclass(frozen=True)
class LeafRule:
    collection: str  # 'params' or 'batch_stats'
    flax_name: str
    ndim: int
    torch_name: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_flax: Callable[[np.ndarray], np.ndarray]


def _same(a):
    return a


LEAF_TABLE: tuple[LeafRule, ...] = (
    LeafRule('params', 'kernel', 4, 'weight', lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),
    LeafRule('params', 'kernel', 2, 'weight', lambda a: a.T, lambda a: a.T),  # Dense (in, out) <-> Linear (out, in)
    LeafRule('params', 'scale', 1, 'weight', _same, _same),                  # BN scale
    LeafRule('params', 'bias', 1, 'bias', _same, _same),
    LeafRule('batch_stats', 'mean', 1, 'running_mean', _same, _same),
    LeafRule('batch_stats', 'var', 1, 'running_var', _same, _same),
    LeafRule('params', 'gate_*', 0, 'gate_*', _same, _same),                  # branch gate, one per edge
)
EDGE_GROUPS = {'input_edges': input_edges, 'node_edges': node_edges}  # Flax scan name -> edge order
ARCH_PREFIX = 'arch.'
NB201_STAGE = re.compile(r'cells(\d+)_(\d+)')  # a scanned NAS-Bench-201 stage: cells first..last


def _flatten(tree: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, 'items'):
            out.update(_flatten(dict(v), prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def _rule(collection: str, name: str, ndim: int, where: str, by_torch: bool = False) -> LeafRule:
    for r in LEAF_TABLE:
        if r.collection == collection and fnmatch.fnmatchcase(name, r.torch_name if by_torch else r.flax_name) \
                and r.ndim == ndim:
            return dataclasses.replace(r, flax_name=name, torch_name=name) if '*' in r.flax_name else r
    raise ValueError(f'{where}: no conversion rule for a {ndim}-d {collection} leaf {name!r}')


@functools.lru_cache(maxsize=8)
def _reference_cached(spec: NetworkSpec) -> dict:
    return dict(torch_search_network(spec).state_dict())


def _reference(spec: NetworkSpec) -> dict:
    """The state_dict layout of torch_search_network(spec) (built once per spec; values are copies)."""
    return {k: v.clone() for k, v in _reference_cached(spec).items()}


def _check_keys(have: set, want: set, what: str):
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        raise ValueError(f'{what}: missing keys {missing[:8]}{"..." if len(missing) > 8 else ""}, '
                         f'unexpected keys {unexpected[:8]}{"..." if len(unexpected) > 8 else ""}')


def _darts_slices(spec: NetworkSpec, modules: list, where: str):
    """Torch module paths of the slices of a DARTS edge stack (`<group>/mixed/...`), or None if not stacked."""
    group = next((g for g in EDGE_GROUPS if g in modules), None)
    if group is None:
        return None
    at = modules.index(group)
    if modules[at + 1:at + 2] != ['mixed']:
        raise ValueError(f'{where}: expected {group}/mixed/...')
    return [modules[:at] + ['edges', str(d)] + modules[at + 2:] for d, _, _ in EDGE_GROUPS[group](spec.steps)]


def _nb201_slices(spec: NetworkSpec, modules: list, where: str):
    """Torch module paths of the cells of a scanned NB201 stage (`cells{a}_{b}/...`), or None if not one."""
    del spec, where
    m = NB201_STAGE.fullmatch(modules[0]) if modules else None
    if m is None:
        return None
    return [modules[:1] + [str(j)] + modules[1:] for j in range(int(m.group(2)) - int(m.group(1)) + 1)]


@functools.lru_cache(maxsize=8)
def _edge_slots(steps: int) -> dict:
    """DARTS edge index -> (Flax edge group, slice in that group's stack)."""
    return {d: (g, j) for g, f in EDGE_GROUPS.items() for j, (d, _, _) in enumerate(f(steps))}


def _darts_stack(spec: NetworkSpec, parts: list):
    """(Flax module path, slice index) of a torch key of a DARTS edge, or None."""
    if 'edges' not in parts:
        return None
    at = parts.index('edges')
    group, j = _edge_slots(spec.steps)[int(parts[at + 1])]
    return tuple(parts[:at]) + (group, 'mixed') + tuple(parts[at + 2:-1]), j


def _nb201_stack(spec: NetworkSpec, parts: list):
    """(Flax module path, slice index) of a torch key inside an NB201 stage, or None."""
    del spec
    if not (NB201_STAGE.fullmatch(parts[0]) and len(parts) > 2 and parts[1].isdigit()):
        return None
    return (parts[0],) + tuple(parts[2:-1]), int(parts[1])


SLICES = {'darts': _darts_slices, 'nb201': _nb201_slices}  # space -> Flax stacked leaf -> torch paths
STACKS = {'darts': _darts_stack, 'nb201': _nb201_stack}     # space -> torch key -> Flax path, slice


def flax_to_torch(spec: NetworkSpec, variables: dict) -> dict:
    """{'params': {'weights', 'arch'?}, 'batch_stats'} -> state_dict of torch_search_network(spec)."""
    ref = _reference(spec)
    params = variables['params']
    weights = params['weights'] if 'weights' in params else params
    sd = {}
    flat = {('params',) + p: v for p, v in _flatten(weights).items()}
    flat.update({('batch_stats',) + p: v for p, v in _flatten(variables.get('batch_stats', {})).items()})
    for path, value in flat.items():
        where = '/'.join(path)
        collection, modules, leaf = path[0], list(path[1:-1]), path[-1]
        a = np.asarray(value)
        slices = SLICES[spec.space](spec, modules, where)
        if slices is None:
            r = _rule(collection, leaf, a.ndim, where)
            sd['.'.join(modules + [r.torch_name])] = r.to_torch(a)
            continue
        if a.shape[:1] != (len(slices),):
            raise ValueError(f'{where}: leading stacked axis {a.shape[:1]}, expected ({len(slices)},)')
        r = _rule(collection, leaf, a.ndim - 1, where)
        for j, torch_modules in enumerate(slices):
            sd['.'.join(torch_modules + [r.torch_name])] = r.to_torch(a[j])
    if 'arch' in params:
        for t in spec.cell_types:
            sd[ARCH_PREFIX + t] = np.asarray(params['arch'][t])
    else:
        ref = {k: v for k, v in ref.items() if not k.startswith(ARCH_PREFIX)}
    for k, v in ref.items():  # torch-only buffers
        if k.endswith('num_batches_tracked'):
            sd[k] = v
    _check_keys(set(sd), set(ref), 'flax_to_torch')
    out = {}
    for k, v in sd.items():
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, dtype=np.float32))
        if tuple(t.shape) != tuple(ref[k].shape):
            raise ValueError(f'flax_to_torch: shape mismatch at {k}: got {tuple(t.shape)}, '
                             f'spec expects {tuple(ref[k].shape)}')
        out[k] = t
    return out


def torch_to_flax(spec: NetworkSpec, state_dict: dict) -> dict:
    """state_dict of torch_search_network(spec) -> {'params': {'weights', 'arch'?}, 'batch_stats'}."""
    ref = _reference(spec)
    sd = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
    if not any(k.startswith(ARCH_PREFIX) for k in sd):
        ref = {k: v for k, v in ref.items() if not k.startswith(ARCH_PREFIX)}
    _check_keys(set(sd), {k for k in ref if not k.endswith('num_batches_tracked')}, 'torch_to_flax')
    flat, stacks, arch = {}, {}, {}
    for k, v in sd.items():
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        if a.shape != tuple(ref[k].shape):
            raise ValueError(f'torch_to_flax: shape mismatch at {k}: got {a.shape}, spec expects {tuple(ref[k].shape)}')
        if k.startswith(ARCH_PREFIX):
            arch[k[len(ARCH_PREFIX):]] = a
            continue
        parts = k.split('.')
        collection = 'batch_stats' if parts[-1].startswith('running_') else 'params'
        r = _rule(collection, parts[-1], a.ndim, k, by_torch=True)
        stacked = STACKS[spec.space](spec, parts)
        if stacked is None:
            flat[(collection,) + tuple(parts[:-1]) + (r.flax_name,)] = r.to_flax(a)
            continue
        modules, j = stacked
        stacks.setdefault((collection,) + modules + (r.flax_name,), {})[j] = r.to_flax(a)
    for path, slices in stacks.items():
        flat[path] = np.stack([slices[j] for j in range(len(slices))])
    tree = _unflatten(flat)
    params = {'weights': tree.get('params', {})}
    if arch:
        params['arch'] = arch
    return {'params': params, 'batch_stats': tree.get('batch_stats', {})}
