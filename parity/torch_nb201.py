"""The NAS-Bench-201 search network in PyTorch (NCHW): asose_jax.space.nb201_network.NB201Network's twin.

Modules are named after the Flax paths: `stem_conv`, `stem_bn`, the ResNet blocks `cell{i}` (conv_a,
conv_b, downsample), `lastact_bn`, `classifier`. A Flax stage `cells{first}_{last}` is one nn.scan whose
params carry a leading axis of its cells; here it is a ModuleList of that name, so its cell j has keys
`cells{first}_{last}.{j}.edge{dst}_{src}.<op>...` and convert.py only (un)stacks that axis. Like the DARTS
twin it is fed the edge weights ({'cell': [6, ops]}, one array for every cell) and keeps `arch.cell`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from asose_jax.space.nb201_genotype import EDGES
from asose_jax.space.nb201_network import _stages
from asose_jax.space.spec import NetworkSpec
from parity.torch_network import ArchParams, MixedOp
from parity.torch_ops import BatchNorm, ReLUConvBN, conv, set_running_var_mode


class ResNetBasicBlock(nn.Module):
    """ReLUConvBN(3x3, stride 2) -> ReLUConvBN(3x3), plus 2x2 avg-pool + 1x1 conv shortcut (affine BN)."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1, affine=True)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine=True)
        self.pool = nn.AvgPool2d(2, 2)
        self.downsample = conv(C_in, C_out, 1)

    def forward(self, x):
        return self.downsample(self.pool(x)) + self.conv_b(self.conv_a(x))


class NB201SearchCell(nn.Module):
    """Node 0 = the input, node d = sum over s < d of MixedOp `edge{d}_{s}` (no BN after the pools);
    weights [6, ops] in EDGES order; returns node 3."""

    def __init__(self, C: int, primitives: Sequence[str], gated: Sequence[str] = (), drop_path_rate: float = 0.0):
        super().__init__()
        for d, s in EDGES:
            self.add_module(f'edge{d}_{s}', MixedOp(C, 1, primitives, gated, drop_path_rate, pool_bn=False))

    def forward(self, x, weights, single_path: bool = False):
        nodes = [x]
        for dst in range(1, max(d for d, _ in EDGES) + 1):
            nodes.append(sum(getattr(self, f'edge{d}_{s}')(nodes[s], weights[e], single_path)
                             for e, (d, s) in enumerate(EDGES) if d == dst))
        return nodes[-1]


class TorchNB201Network(ArchParams, nn.Module):
    """Stem, three stages of search cells with ResNet blocks between them, BN-ReLU, GAP, dropout, linear.
    running_var as TorchSearchNetwork ('biased': Flax's running-variance update)."""

    def __init__(self, spec: NetworkSpec, running_var: str = 'biased'):
        super().__init__()
        if spec.space != 'nb201':
            raise ValueError(f'TorchNB201Network needs an nb201 spec, got space {spec.space!r}')
        self.spec = spec
        self.stem_conv = conv(3, spec.stem_C, 3, 1, 1)
        self.stem_bn = BatchNorm(spec.stem_C, affine=True)
        self.blocks = []  # (module name, is a stage), in order
        c = spec.stem_C
        for first, count, cell in _stages(spec.cells):
            name = f'cell{first}' if cell.reduction else f'cells{first}_{first + count - 1}'
            self.add_module(name, self._block(c, cell, count))
            self.blocks.append((name, not cell.reduction))
            c = cell.C
        self.lastact_bn = BatchNorm(c, affine=True)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(c, spec.num_classes)
        self._init_arch(spec)
        set_running_var_mode(self, running_var)

    def _block(self, C_in: int, cell, count: int) -> nn.Module:
        """A ResNet block, or a stage of `count` search cells (a cell keeps its input's channels)."""
        if cell.reduction:
            return ResNetBasicBlock(C_in, cell.C)
        if cell.C != C_in:
            raise ValueError(f'an NB201 stage of C={cell.C} reads {C_in} channels')
        return nn.ModuleList(NB201SearchCell(cell.C, self.spec.primitives, self.spec.branch_ops,
                                             self.spec.drop_path) for _ in range(count))

    def forward(self, x, edge_weights: dict, single_path: bool = False):
        x = self.stem_bn(self.stem_conv(x))
        for name, is_stage in self.blocks:
            block = getattr(self, name)
            if not is_stage:
                x = block(x)
                continue
            for cell in block:
                x = cell(x, edge_weights['cell'], single_path)
        x = torch.relu(self.lastact_bn(x))
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))
