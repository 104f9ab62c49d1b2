"""The search network in PyTorch (NCHW): asose_jax.space.network.SearchNetwork's twin, and `torch_search_network`,
the one factory that picks the twin of a spec's space (NAS-Bench-201: parity/torch_nb201.py).

It takes the edge weights as input and never samples noise. Modules are named after the Flax
module paths (`cell{i}`, `pre0`, `stem_conv`, ...); the scanned Flax edges become `cell{i}.edges.{d}`
with d the DARTS edge index, so convert.py needs only a short rename table. The arch logits live in
`arch.normal` / `arch.reduce` (like DARTS' alphas) so that a state_dict carries the whole search state;
the forward pass does not read them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from asose_jax.space.cells import input_edges, node_edges
from asose_jax.space.spec import NetworkSpec
from parity.torch_ops import (BatchNorm, FactorizedReduce, ReLUConvBN, conv, make_op,
                              set_running_var_mode)


def drop_path(x, rate: float, training: bool):
    """cells.drop_path's twin: zero whole samples with probability `rate`, rescale the rest. The mask
    comes from torch's RNG, so train-mode outputs with rate > 0 are not comparable with JAX's."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.bernoulli(torch.full((x.shape[0], 1, 1, 1), keep, dtype=x.dtype, device=x.device))
    return x * mask / keep


class MixedOp(nn.Module):
    """sum_k w_k * op_k(x); single_path evaluates only op argmax(w), times w[argmax] (as cells.MixedOp),
    so straight-through gradients reach every logit of the edge. Ops in `gated` (growth's branch ops)
    are scaled by a scalar `gate_<op>` that starts at zero; drop-path on the edge output in train mode.
    pool_bn: DARTS follows pools with a non-affine BN, NAS-Bench-201 does not (as cells.MixedOp)."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str], gated: Sequence[str] = (),
                 drop_path_rate: float = 0.0, pool_bn: bool = True):
        super().__init__()
        self.primitives, self.drop_path_rate = tuple(primitives), drop_path_rate
        for p in self.primitives:  # registered by name, so keys read edges.<d>.<op>... like Flax's mixed/<op>
            self.add_module(p, make_op(p, C, stride, affine=False, search=pool_bn))
        self.gated = tuple(gated)
        for p in self.gated:
            self.register_parameter(f'gate_{p}', nn.Parameter(torch.zeros(())))

    def _op(self, k: int, x):
        p = self.primitives[k]
        y = getattr(self, p)(x)
        return y * getattr(self, f'gate_{p}') if p in self.gated else y

    def forward(self, x, w, single_path: bool = False):
        if not single_path:
            out = sum(w[k] * self._op(k, x) for k in range(len(self.primitives)))
        else:
            k = int(torch.argmax(w))
            out = self._op(k, x) * w[k]
        return drop_path(out, self.drop_path_rate, self.training)


class SqueezeExcite(nn.Module):
    """network.SqueezeExcite's twin: x * 2*sigmoid(fc2(relu(fc1(mean_hw(x))))), fc2 zero-initialised."""

    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(C, hidden), nn.Linear(hidden, C)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x):
        g = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))
        return x * (2.0 * torch.sigmoid(g))[:, :, None, None]


class SearchCell(nn.Module):
    """`steps` nodes, node i = sum over earlier states j of edge (offset_i + j), DARTS order."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool,
                 primitives: Sequence[str], steps: int, multiplier: int, gated: Sequence[str] = (),
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.steps, self.multiplier = steps, multiplier
        self.pre0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                     else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        edges = {d: MixedOp(C, 2 if reduction else 1, primitives, gated, drop_path_rate)
                 for d, _, _ in input_edges(steps)}
        edges.update({d: MixedOp(C, 1, primitives, gated, drop_path_rate) for d, _, _ in node_edges(steps)})
        self.edges = nn.ModuleDict({str(d): edges[d] for d in sorted(edges)})

    def forward(self, s0, s1, weights, single_path: bool = False):
        states, offset = [self.pre0(s0), self.pre1(s1)], 0
        for _ in range(self.steps):
            s = sum(self.edges[str(offset + j)](h, weights[offset + j], single_path) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


class ArchParams:
    """The arch logits `arch.<cell type>` (DARTS init) and the weight/arch parameter split that both twins
    share, so that torch_steps drives either one."""

    def _init_arch(self, spec: NetworkSpec):
        self.arch = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(spec.num_edges, spec.num_ops))
                                      for t in spec.cell_types})

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything but the arch logits (the weight optimiser's parameters)."""
        return [p for n, p in self.named_parameters() if not n.startswith('arch.')]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.arch[t] for t in self.spec.cell_types]


class TorchSearchNetwork(ArchParams, nn.Module):
    """Stem, the cells of `spec` (residual cells through a zero-init BN gate, attention cells ending in a
    squeeze-excite gate `cell{i}_se`), GAP, dropout, linear classifier.

    running_var: 'biased' updates BN running variances as Flax does (default, for parity of batch
    statistics); 'unbiased' is stock torch.nn.BatchNorm2d. Train/eval via .train()/.eval().
    """

    def __init__(self, spec: NetworkSpec, running_var: str = 'biased'):
        super().__init__()
        if spec.space != 'darts':
            raise ValueError(f'TorchSearchNetwork is the DARTS-space twin, got space {spec.space!r}: '
                             'use torch_search_network(spec)')
        self.spec = spec
        self.stem_conv = conv(3, spec.stem_C, 3, 1, 1)
        self.stem_bn = BatchNorm(spec.stem_C, affine=True)
        c0 = c1 = spec.stem_C
        level0 = level1 = 0
        for i, cell in enumerate(spec.cells):
            self.add_module(f'cell{i}', SearchCell(c0, c1, cell.C, cell.reduction, level0 != level1,
                                                   spec.primitives, spec.steps, spec.multiplier,
                                                   spec.branch_ops, spec.drop_path))
            c_out = spec.multiplier * cell.C
            if cell.attention:
                self.add_module(f'cell{i}_se', SqueezeExcite(c_out, cell.attention))
            if cell.residual:
                if c_out != c1:
                    raise ValueError(f'cell {i}: residual cell outputs {c_out} channels, its input has {c1}')
                self.add_module(f'cell{i}_gate', BatchNorm(c_out, affine=True, zero_init=True))
            else:
                c0, c1, level0, level1 = c1, c_out, level1, level1 + int(cell.reduction)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(c1, spec.num_classes)
        self._init_arch(spec)
        set_running_var_mode(self, running_var)

    def forward(self, x, edge_weights: dict, single_path: bool = False):
        s0 = s1 = self.stem_bn(self.stem_conv(x))
        for i, cell in enumerate(self.spec.cells):
            w = edge_weights['reduce' if cell.reduction else 'normal']
            out = getattr(self, f'cell{i}')(s0, s1, w, single_path)
            if cell.attention:
                out = getattr(self, f'cell{i}_se')(out)
            if cell.residual:
                s1 = s1 + getattr(self, f'cell{i}_gate')(out)
            else:
                s0, s1 = s1, out
        return self.classifier(self.dropout(s1.mean(dim=(2, 3))))


def torch_search_network(spec: NetworkSpec, running_var: str = 'biased') -> nn.Module:
    """The torch twin of `asose_jax.space.network.search_network(spec)`, by `spec.space`; callers never pick one."""
    if spec.space == 'nb201':
        from parity.torch_nb201 import TorchNB201Network  # noqa: PLC0415 (it imports MixedOp from here)
        return TorchNB201Network(spec, running_var)
    return TorchSearchNetwork(spec, running_var)
