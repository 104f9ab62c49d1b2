"""Search and fixed networks; the arch logits are declared here (they are inputs to the model).

The search network takes edge weights (sampled outside, see gumbel.py) rather than owning the
logits, so sampling, parity and sweeps can all feed it. Variables are laid out as
`{'params': {'weights': ..., 'arch': {'normal': [E, K], 'reduce': [E, K]}}, 'batch_stats': ...}`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from asose_jax.space.cells import FixedCell, SearchCell
from asose_jax.space.genotype import Genotype
from asose_jax.space.nb201_network import NB201Network
from asose_jax.space.ops import batch_norm, conv, stem
from asose_jax.space.spec import NetworkSpec


class SqueezeExcite(nn.Module):
    """x * 2*sigmoid(fc2(relu(fc1(mean(x))))): fc2 starts at zero, so the gate starts as the identity."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        h = nn.relu(nn.Dense(self.hidden, name='fc1')(jnp.mean(x, axis=(1, 2))))
        g = nn.Dense(c, kernel_init=nn.initializers.zeros, name='fc2')(h)
        return x * (2.0 * nn.sigmoid(g))[:, None, None, :]


class SearchNetwork(nn.Module):
    """Stem, the cells of `spec`, global average pool, linear classifier. Returns logits.

    Growth-made structure: residual cells add their output to c_{k-1} through a zero-scale BN
    (`cell{i}_gate`), attention cells end in `cell{i}_se`, branch ops carry per-edge gates, and
    `spec.dropout` / `spec.drop_path` regularise in train mode (they need a 'dropout' rng then).
    """

    spec: NetworkSpec
    depthwise_impl: str = 'conv'
    remat: bool = False  # recompute each cell's activations in the backward pass (memory for time)
    remat_branch: bool = False  # recompute each candidate op in the backward pass (cells.MixedOp)
    unroll_edges: bool = False  # unroll each cell's edge scans (cells.SearchCell)
    materialize_edge_grads: bool = False  # edge input gradients outside the loops' updates (cells.SearchCell)

    @nn.compact
    def __call__(self, x, edge_weights, train: bool = True, single_path: bool = False):
        spec = self.spec
        # static_argnums count `self` as 0: (train, single_path) of SearchCell.__call__
        cell_cls = nn.remat(SearchCell, static_argnums=(4, 5)) if self.remat else SearchCell
        s0 = s1 = stem(spec.stem_C, x, train)
        level0 = level1 = 0  # how many reductions each of (c_{k-2}, c_{k-1}) has been through
        for i, cell in enumerate(spec.cells):
            out = cell_cls(cell.C, cell.reduction, level0 != level1, spec.primitives, spec.steps,
                           spec.multiplier, self.depthwise_impl, spec.branch_ops, spec.drop_path, self.remat_branch,
                           self.unroll_edges, self.materialize_edge_grads, name=f'cell{i}')(
                s0, s1, edge_weights['reduce' if cell.reduction else 'normal'], train, single_path)
            if cell.attention:
                out = SqueezeExcite(cell.attention, name=f'cell{i}_se')(out)
            if cell.residual:
                gate = batch_norm(train, affine=True, name=f'cell{i}_gate', scale_init=nn.initializers.zeros)
                s1 = s1 + gate(out)
            else:
                s0, s1, level0, level1 = s1, out, level1, level1 + int(cell.reduction)
        features = nn.Dropout(spec.dropout, deterministic=not train or spec.dropout == 0.0)(jnp.mean(s1, axis=(1, 2)))
        return nn.Dense(spec.num_classes, name='classifier')(features)


class AuxiliaryHead(nn.Module):
    """DARTS' CIFAR auxiliary head on the 8x8 feature map at 2/3 depth."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(x)
        x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding='VALID', count_include_pad=False)
        x = nn.relu(batch_norm(train, True, name='bn1')(conv(128, 1, name='conv1')(x)))
        x = conv(768, 2, name='conv2')(x)
        x = nn.relu(batch_norm(train, True, name='bn2')(x))
        return nn.Dense(self.num_classes, name='classifier')(x.reshape(x.shape[0], -1))


class FixedNetwork(nn.Module):
    """The derived discrete network (DARTS NetworkCIFAR). Returns (logits, aux_logits or None)."""

    genotype: Genotype
    C: int = 16
    layers: int = 8
    num_classes: int = 10
    stem_multiplier: int = 3
    auxiliary: bool = False
    drop_path_rate: float = 0.0
    depthwise_impl: str = 'conv'

    @nn.compact
    def __call__(self, x, train: bool = True):
        s0 = s1 = stem(self.stem_multiplier * self.C, x, train)
        C, reduction_prev, aux = self.C, False, None
        for i in range(self.layers):
            reduction = i in (self.layers // 3, 2 * self.layers // 3)
            C = C * 2 if reduction else C
            s0, s1 = s1, FixedCell(self.genotype, C, reduction, reduction_prev, self.drop_path_rate,
                                   self.depthwise_impl, name=f'cell{i}')(s0, s1, train)
            reduction_prev = reduction
            if self.auxiliary and train and i == 2 * self.layers // 3:
                aux = AuxiliaryHead(self.num_classes, name='aux_head')(s1, train)
        return nn.Dense(self.num_classes, name='classifier')(jnp.mean(s1, axis=(1, 2))), aux


def search_network(spec: NetworkSpec, depthwise_impl: str = 'conv', remat: bool = False, remat_branch: bool = False,
                   unroll_edges: bool = False, materialize_edge_grads: bool = False) -> nn.Module:
    """The search network of the spec's space, called as `(x, edge_weights, train, single_path) -> logits`.
    The DARTS-only execution forms (remat per cell, edge-scan forms) do not apply to NAS-Bench-201 cells."""
    if spec.space == 'nb201':
        return NB201Network(spec, depthwise_impl=depthwise_impl, remat_branch=remat_branch)
    return SearchNetwork(spec, depthwise_impl, remat=remat, remat_branch=remat_branch, unroll_edges=unroll_edges,
                         materialize_edge_grads=materialize_edge_grads)


def init_arch_logits(spec: NetworkSpec, key) -> dict:
    """DARTS init: 1e-3 * N(0, 1), one [edges, ops] array per cell type."""
    keys = jax.random.split(key, len(spec.cell_types))
    return {t: 1e-3 * jax.random.normal(k, (spec.num_edges, spec.num_ops)) for t, k in zip(spec.cell_types, keys)}


def uniform_edge_weights(spec: NetworkSpec) -> dict:
    w = jnp.full((spec.num_edges, spec.num_ops), 1.0 / spec.num_ops)
    return {t: w for t in spec.cell_types}


def init_search_variables(spec: NetworkSpec, key, image_size: int = 32, depthwise_impl: str = 'conv') -> dict:
    """Variables of a search network in the {'params': {'weights', 'arch'}, 'batch_stats'} layout."""
    k_net, k_arch = jax.random.split(key)
    model = search_network(spec, depthwise_impl)
    x = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x, uniform_edge_weights(spec), train=False))(k_net)
    return {'params': {'weights': variables['params'], 'arch': init_arch_logits(spec, k_arch)},
            'batch_stats': variables.get('batch_stats', {})}


def cell_input_channels(spec: NetworkSpec) -> list[tuple[int, int, bool]]:
    """(channels of c_{k-2}, channels of c_{k-1}, reduction_prev) of each cell, following the chain
    SearchNetwork builds (residual cells do not shift it)."""
    c0 = c1 = spec.stem_C
    level0 = level1 = 0
    out = []
    for cell in spec.cells:
        out.append((c0, c1, level0 != level1))
        if not cell.residual:
            c0, c1 = c1, spec.multiplier * cell.C
            level0, level1 = level1, level1 + int(cell.reduction)
    return out


def init_cell_variables(spec: NetworkSpec, index: int, key, size: int = 8) -> dict:
    """Fresh variables of cell `index` alone (with its residual gate and attention gate), laid out
    as in the whole network: {'params': {'cell{i}': ..., ...}, 'batch_stats': {...}}. Growth uses it
    so that adding a cell compiles one cell's init, not the whole network's."""
    cell = spec.cells[index]
    c0, c1, reduction_prev = cell_input_channels(spec)[index]
    s0 = jnp.zeros((1, 2 * size if reduction_prev else size, 2 * size if reduction_prev else size, c0))
    s1 = jnp.zeros((1, size, size, c1))
    w = uniform_edge_weights(spec)['reduce' if cell.reduction else 'normal']
    module = SearchCell(cell.C, cell.reduction, reduction_prev, spec.primitives, spec.steps, spec.multiplier,
                        gated=spec.branch_ops)
    k_cell, k_gate, k_se = jax.random.split(key, 3)
    v = jax.jit(lambda k: module.init(k, s0, s1, w, train=False))(k_cell)
    params, stats = {f'cell{index}': v['params']}, {f'cell{index}': v['batch_stats']}
    out = jnp.zeros((1, 1, 1, spec.multiplier * cell.C))
    if cell.residual:
        g = batch_norm(False, affine=True, scale_init=nn.initializers.zeros).init(k_gate, out)
        params[f'cell{index}_gate'], stats[f'cell{index}_gate'] = g['params'], g['batch_stats']
    if cell.attention:
        params[f'cell{index}_se'] = SqueezeExcite(cell.attention).init(k_se, out)['params']
    return {'params': params, 'batch_stats': stats}


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
