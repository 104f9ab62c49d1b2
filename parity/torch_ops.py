"""DARTS and NAS-Bench-201 primitives in PyTorch (NCHW), named like their Flax twins in asose_jax/space/ops.py so
that the state_dict keys follow the Flax module paths (see convert.py)."""
from __future__ import annotations

import torch
from torch import nn

RUNNING_VAR_MODES = ('biased', 'unbiased')


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d(eps=1e-5, momentum=0.1), optionally with the Flax running-variance update.

    Train-mode outputs are the same either way (both normalise by the biased batch variance). Only the
    running variance differs: stock torch ('unbiased') averages the unbiased batch variance, Flax
    ('biased', the default here so that batch statistics can be compared) the biased one.
    """

    def __init__(self, C: int, affine: bool, zero_init: bool = False):
        super().__init__(C, eps=1e-5, momentum=0.1, affine=affine)
        self.running_var_mode = 'biased'
        if affine and zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x):
        if not self.training or self.running_var_mode == 'unbiased':
            return super().forward(x)
        if self.running_var_mode != 'biased':
            raise ValueError(f'running_var mode {self.running_var_mode!r}; allowed: {RUNNING_VAR_MODES}')
        mean = x.mean(dim=(0, 2, 3))
        var = (x - mean[None, :, None, None]).square().mean(dim=(0, 2, 3))  # two-pass, like Flax
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
            self.num_batches_tracked.add_(1)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def set_running_var_mode(module: nn.Module, mode: str) -> None:
    """Sets the running-variance mode of every BatchNorm in `module` ('biased': Flax's, 'unbiased': stock torch)."""
    if mode not in RUNNING_VAR_MODES:
        raise ValueError(f'running_var={mode!r}; allowed: {RUNNING_VAR_MODES}')
    for m in module.modules():
        if isinstance(m, BatchNorm):
            m.running_var_mode = mode


def conv(C_in: int, C_out: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
         groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(C_in, C_out, kernel, stride, padding, dilation, groups=groups, bias=False)


class ReLUConvBN(nn.Module):
    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__()
        self.conv = conv(C_in, C_out, kernel, stride, padding)
        self.bn = BatchNorm(C_out, affine)

    def forward(self, x):
        return self.bn(self.conv(torch.relu(x)))


class DilConv(nn.Module):
    """ReLU, depthwise (dilated) conv `dw`, pointwise conv `pw`, BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool):
        super().__init__()
        self.dw = conv(C_in, C_in, kernel, stride, padding, dilation, groups=C_in)
        self.pw = conv(C_in, C_out, 1)
        self.bn = BatchNorm(C_out, affine)

    def forward(self, x):
        return self.bn(self.pw(self.dw(torch.relu(x))))


class SepConv(nn.Module):
    """Two DilConv(dilation=1), `op1` (strided) and `op2`."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__()
        self.op1 = DilConv(C_in, C_in, kernel, stride, padding, 1, affine)
        self.op2 = DilConv(C_in, C_out, kernel, 1, padding, 1, affine)

    def forward(self, x):
        return self.op2(self.op1(x))


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset 1x1 stride-2 convs `conv1`, `conv2`, concatenated, BN."""

    def __init__(self, C_in: int, C_out: int, affine: bool):
        super().__init__()
        if C_out % 2:
            raise ValueError(f'FactorizedReduce needs an even channel count, got {C_out}')
        self.conv1 = conv(C_in, C_out // 2, 1, 2)
        self.conv2 = conv(C_in, C_out // 2, 1, 2)
        self.bn = BatchNorm(C_out, affine)

    def forward(self, x):
        x = torch.relu(x)
        return self.bn(torch.cat([self.conv1(x), self.conv2(x[:, :, 1:, 1:])], dim=1))


class Pool(nn.Module):
    """3x3 max/avg pool, padding 1, avg excluding padding; `bn` (non-affine) in search cells."""

    def __init__(self, kind: str, C: int, stride: int, with_bn: bool):
        super().__init__()
        self.pool = (nn.MaxPool2d(3, stride, 1) if kind == 'max'
                     else nn.AvgPool2d(3, stride, 1, count_include_pad=False))
        self.bn = BatchNorm(C, affine=False) if with_bn else None

    def forward(self, x):
        x = self.pool(x)
        return self.bn(x) if self.bn is not None else x


def make_op(primitive: str, C: int, stride: int, affine: bool, *, search: bool = False) -> nn.Module:
    """Builds one DARTS or NAS-Bench-201 primitive on C channels (asose_jax.space.ops.make_op's twin). `search=True`
    adds DARTS' BN after the pools (NAS-Bench-201 cells pass False)."""
    if primitive == 'nor_conv_1x1':
        return ReLUConvBN(C, C, 1, stride, 0, affine)
    if primitive == 'nor_conv_3x3':
        return ReLUConvBN(C, C, 3, stride, 1, affine)
    if primitive == 'none':
        return Zero(stride)
    if primitive == 'max_pool_3x3':
        return Pool('max', C, stride, search)
    if primitive == 'avg_pool_3x3':
        return Pool('avg', C, stride, search)
    if primitive == 'skip_connect':
        return Identity() if stride == 1 else FactorizedReduce(C, C, affine)
    if primitive == 'sep_conv_3x3':
        return SepConv(C, C, 3, stride, 1, affine)
    if primitive == 'sep_conv_5x5':
        return SepConv(C, C, 5, stride, 2, affine)
    if primitive == 'dil_conv_3x3':
        return DilConv(C, C, 3, stride, 2, 2, affine)
    if primitive == 'dil_conv_5x5':
        return DilConv(C, C, 5, stride, 4, 2, affine)
    raise ValueError(f'unknown op {primitive!r}')
