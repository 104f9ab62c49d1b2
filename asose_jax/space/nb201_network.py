"""The NAS-Bench-201 network (search and fixed), built from the engine's MixedOp and ops.

Macro layout as in the benchmark: 3x3 conv stem + BN, three stages of N cells (C, 2C, 4C) with a
ResNet basic block (stride 2) between them, BN-ReLU, global average pool, linear classifier. A cell
has node 0 = its input, node j = sum over i < j of edge (i -> j), and returns node 3. The N cells of a
stage have one shape, so each stage is one `nn.scan` (params stacked on a leading axis of N): the
compiled program holds three cell bodies whatever N is.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from asose_jax.space.cells import MixedOp, drop_path
from asose_jax.space.nb201_genotype import EDGES, NB201Genotype
from asose_jax.space.ops import ReLUConvBN, batch_norm, conv, make_op, stem
from asose_jax.space.spec import CellSpec, NetworkSpec


class ResNetBasicBlock(nn.Module):
    """ReLUConvBN(3x3, stride 2) -> ReLUConvBN(3x3) plus an avg-pool + 1x1 conv shortcut (affine BN)."""

    C_out: int

    @nn.compact
    def __call__(self, x, train: bool):
        y = ReLUConvBN(self.C_out, 3, 2, 1, affine=True, name='conv_a')(x, train)
        y = ReLUConvBN(self.C_out, 3, 1, 1, affine=True, name='conv_b')(y, train)
        shortcut = nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        return conv(self.C_out, 1, name='downsample')(shortcut) + y


class NB201SearchCell(nn.Module):
    """Every edge a MixedOp over `primitives` (non-affine BN, no BN after the pool); `weights` [6, ops]."""

    C: int
    primitives: Sequence[str]
    train: bool
    single_path: bool
    depthwise_impl: str = 'conv'
    gated: Sequence[str] = ()
    drop_path_rate: float = 0.0
    remat_branch: bool = False

    @nn.compact
    def __call__(self, x, weights):
        nodes = [x]
        for dst in range(1, 4):
            terms = [MixedOp(self.C, 1, tuple(self.primitives), self.depthwise_impl, tuple(self.gated),
                             self.drop_path_rate, self.remat_branch, pool_bn=False, name=f'edge{dst}_{src}')(
                nodes[src], weights[e], self.train, self.single_path)
                for e, (d, src) in enumerate(EDGES) if d == dst]
            nodes.append(sum(terms))
        return nodes[-1], None


class NB201FixedCell(nn.Module):
    """The derived cell: each edge its one op (affine BN); 'none' edges are left out."""

    C: int
    genotype: NB201Genotype
    train: bool
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x, weights=None):
        del weights
        nodes = [x]
        for dst in range(1, 4):
            node = jnp.zeros_like(x)
            for op, (d, src) in zip(self.genotype.ops, EDGES):
                if d != dst or op == 'none':
                    continue
                h = make_op(op, self.C, 1, affine=True, name=f'edge{dst}_{src}')(nodes[src], self.train)
                node = node + (h if op == 'skip_connect' else drop_path(self, h, self.drop_path_rate, self.train))
            nodes.append(node)
        return nodes[-1], None


def _stages(cells: Sequence[CellSpec]) -> list[tuple[int, int, CellSpec]]:
    """(first index, count, cell) of each run of consecutive search cells, and (index, 0, cell) of each
    reduction block, in order."""
    out: list[tuple[int, int, CellSpec]] = []
    for i, cell in enumerate(cells):
        if not cell.reduction and out and out[-1][1] and out[-1][2] == cell:
            out[-1] = (out[-1][0], out[-1][1] + 1, cell)
        else:
            out.append((i, 0 if cell.reduction else 1, cell))
    return out


class NB201Network(nn.Module):
    """NAS-Bench-201 network of `spec`: a search network fed edge weights {'cell': [6, ops]}, or, with
    `genotype`, the fixed network of that cell. Returns logits."""

    spec: NetworkSpec
    genotype: NB201Genotype | None = None
    depthwise_impl: str = 'conv'
    remat_branch: bool = False
    drop_path_rate: float = 0.0  # fixed network: per-edge drop-path in train mode

    @nn.compact
    def __call__(self, x, edge_weights=None, train: bool = True, single_path: bool = False):
        spec = self.spec
        x = stem(spec.stem_C, x, train)
        for first, count, cell in _stages(spec.cells):
            if cell.reduction:
                x = ResNetBasicBlock(cell.C, name=f'cell{first}')(x, train)
                continue
            if self.genotype is not None:
                body, args, weights = NB201FixedCell, (cell.C, self.genotype, train, self.drop_path_rate), None
            else:
                body = NB201SearchCell
                args = (cell.C, spec.primitives, train, single_path, self.depthwise_impl, spec.branch_ops,
                        spec.drop_path, self.remat_branch)
                weights = edge_weights['cell']
            stage = nn.scan(body, variable_axes={'params': 0, 'batch_stats': 0},
                            split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                            length=count)(*args, name=f'cells{first}_{first + count - 1}')
            x, _ = stage(x, weights)
        x = nn.relu(batch_norm(train, affine=True, name='lastact_bn')(x))
        features = nn.Dropout(spec.dropout, deterministic=not train or spec.dropout == 0.0)(jnp.mean(x, axis=(1, 2)))
        return nn.Dense(spec.num_classes, name='classifier')(features)


class NB201FixedNetwork(nn.Module):
    """A NAS-Bench-201 architecture trained from scratch; returns (logits, None) like FixedNetwork."""

    genotype: NB201Genotype
    C: int = 16
    cells_per_stage: int = 5
    num_classes: int = 10
    drop_path_rate: float = 0.0
    depthwise_impl: str = 'conv'

    @nn.compact
    def __call__(self, x, train: bool = True):
        spec = NetworkSpec.nb201(self.C, self.cells_per_stage, self.num_classes)
        return NB201Network(spec, self.genotype, self.depthwise_impl, drop_path_rate=self.drop_path_rate,
                            name='net')(x, train=train), None
