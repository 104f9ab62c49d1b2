"""DARTS primitives as Flax modules (NHWC), with the DARTS padding/BN conventions.

BatchNorm matches PyTorch's BatchNorm2d(momentum=0.1) as Flax momentum=0.9, eps=1e-5 and the
two-pass variance. Depthwise convolutions have two interchangeable implementations with the same
parameters: XLA's grouped convolution ('conv') and k*k shifted multiply-adds ('shift'), which XLA
fuses into one loop and which is much faster on CPU (a custom VJP keeps its backward as lean);
the 3x3 pools follow the same choice (reduce-window, or shifted slices with a lean max-pool VJP).
1x1 convolutions are nn.Conv, or matmuls over channels under `pointwise('dot')` (same parameters).
"""
from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype

DEPTHWISE_IMPLS = ('conv', 'shift')
POINTWISE_IMPLS = ('conv', 'dot')


def batch_norm(train: bool, affine: bool, name: str | None = None, scale_init=nn.initializers.ones):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        use_bias=affine, use_scale=affine, use_fast_variance=False,
                        scale_init=scale_init, name=name)


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
         name: str | None = None) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)),
                   kernel_dilation=(dilation, dilation), use_bias=False, name=name)


def stem(C: int, x, train: bool):
    """3x3 conv + affine BN: the stem of the DARTS and NAS-Bench-201 networks."""
    x = conv(C, 3, 1, 1, name='stem_conv')(x)
    return batch_norm(train, affine=True, name='stem_bn')(x)


def _is_pointwise(m: nn.Module) -> bool:
    """A 1x1 nn.Conv without padding, dilation, groups or bias: a matmul over channels."""
    return (isinstance(m, nn.Conv) and tuple(m.kernel_size) == (1, 1) and not m.use_bias
            and m.feature_group_count == 1 and m.padding in ('VALID', ((0, 0), (0, 0)))
            and m.kernel_dilation in (None, 1, (1, 1)) and m.input_dilation in (None, 1, (1, 1)))


def _pointwise_as_dot(next_fun, args, kwargs, context):
    """nn.intercept_methods interceptor: computes a 1x1 nn.Conv (see `_is_pointwise`) as an einsum
    over channels with the conv's own kernel parameter, so parameters are unchanged."""
    m = context.module
    if context.method_name != '__call__' or not _is_pointwise(m):
        return next_fun(*args, **kwargs)
    (x,) = args
    kernel = m.param('kernel', m.kernel_init, (1, 1, x.shape[-1], m.features), m.param_dtype)
    x, kernel = promote_dtype(x, kernel, dtype=m.dtype)
    sh, sw = (m.strides, m.strides) if isinstance(m.strides, int) else (m.strides or (1, 1))
    x = x[:, ::sh, ::sw, :]
    # A 2-D matmul, not an einsum over NHWC: on XLA's CPU backend the einsum's gradient (its kernel
    # gradient 'nhwc,nhwo->co' above all) ran ~2.5x slower than the flattened one's.
    y = jnp.matmul(x.reshape(-1, x.shape[-1]), kernel[0, 0], precision=m.precision)
    return y.reshape(x.shape[:-1] + (m.features,))


def pointwise(impl: str):
    """Context for `model.apply`: 'conv' keeps nn.Conv for 1x1 convolutions, 'dot' computes them as
    matmuls. Why: under vmap (the sweep) a conv whose kernel is batched lowers to a grouped
    convolution, a matmul to a batched matmul (N=8 sweep on an H100: 1.40x the images/s); and XLA's
    CPU kernel gradient of a 1x1 conv is slow (the CPU DARTS-shape weight step: 3.1x the images/s).
    Off by default: unoptimised CPU compiles (the tests) take ~20% longer with it."""
    if impl not in POINTWISE_IMPLS:
        raise ValueError(f'pointwise impl {impl!r}; allowed: {POINTWISE_IMPLS}')
    return nn.intercept_methods(_pointwise_as_dot) if impl == 'dot' else contextlib.nullcontext()


def _shift_out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_shift(x, kernel, stride, padding, dilation):
    """Depthwise conv as a sum of k*k strided slices times per-channel taps.

    The custom VJP keeps only (x, kernel) for the backward pass. Autodiff alone makes XLA's CPU
    backend materialise all k*k shifted windows for the kernel gradient: 2.6-6.3x the temporary
    memory of the grouped conv, which ran the DARTS-shape step out of memory (bench/RESULTS.md)."""
    return _shifted_sum(_pad_hw(x, padding, 0), kernel, stride, dilation)


def _pad_hw(x, padding, fill):
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)


def _shifted_sum(xp, kernel, stride, dilation):
    windows = _windows(xp, kernel.shape[0], stride, dilation)
    return functools.reduce(jnp.add, (patch * kernel[i, j, 0] for i, j, patch in windows))


def _windows(xp, k, stride, dilation):
    """(i, j, window) for the k*k taps of padded `xp`: window[o] is what tap (i, j) of output o reads."""
    n, hp, wp, c = xp.shape
    h_out = _shift_out_size(hp, k, stride, 0, dilation)
    w_out = _shift_out_size(wp, k, stride, 0, dilation)
    for i in range(k):
        for j in range(k):
            yield i, j, jax.lax.slice(
                xp, (0, i * dilation, j * dilation, 0),
                (n, i * dilation + (h_out - 1) * stride + 1, j * dilation + (w_out - 1) * stride + 1, c),
                (1, stride, stride, 1))


def _input_windows(g, in_hw, k, stride, padding, dilation, fill):
    """The transpose of `_windows`: (i, j, window) with window[q] the value of output-sized `g` at the
    position whose tap (i, j) reads input position q (`fill` where none does). An input gradient is then
    k*k shifted multiply-adds again: g dilated by the stride and padded so that every window lies inside."""
    n, h_out, w_out, c = g.shape
    h, w = in_hw
    reach = (k - 1) * dilation
    gp = jax.lax.pad(g, jnp.asarray(fill, g.dtype), (
        (0, 0, 0),
        (reach, h + 2 * padding - (h_out - 1) * stride - 1, stride - 1),
        (reach, w + 2 * padding - (w_out - 1) * stride - 1, stride - 1),
        (0, 0, 0)))
    for i in range(k):
        for j in range(k):
            top, left = padding + reach - i * dilation, padding + reach - j * dilation
            yield i, j, jax.lax.slice(gp, (0, top, left, 0), (n, top + h, left + w, c))


def _depthwise_shift_fwd(x, kernel, stride, padding, dilation):
    return _depthwise_shift(x, kernel, stride, padding, dilation), (x, kernel)


def _depthwise_shift_bwd(stride, padding, dilation, residuals, g):
    x, kernel = residuals
    k = kernel.shape[0]
    h, w, c = x.shape[1:]
    xp = _pad_hw(x, padding, 0)

    # The kernel gradient: one variadic reduce of the k*k window-times-g products, which XLA fuses into a
    # single pass over x and g (no window is materialised), over (H, W) first so that the pass is split over
    # the batch (and the cores); the batch sum after it is small. A tap-at-a-time loop (a materialised
    # window and a YNNPACK reduction per tap) ran the CPU DilConv gradient 1.42x slower.
    products = [(window * g).astype(jnp.float32) for _, _, window in _windows(xp, k, stride, dilation)]
    per_image = jax.lax.reduce(products, [jnp.float32(0)] * len(products),
                               lambda a, b: tuple(u + v for u, v in zip(a, b)), (1, 2))
    d_kernel = jnp.stack(per_image).sum(axis=1).reshape(k, k, 1, c).astype(kernel.dtype)
    windows = _input_windows(g, (h, w), k, stride, padding, dilation, 0)
    d_x = functools.reduce(jnp.add, (window * kernel[i, j, 0] for i, j, window in windows))
    return d_x.astype(x.dtype), d_kernel


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def _max_pool_taps(x, stride):
    """3x3 max pool (padding 1) and, per output, the first tap in row-major order holding the max (torch's
    CPU kernel picks the same; a NaN wins, so it propagates)."""
    windows = _windows(_pad_hw(x, 1, -jnp.inf), 3, stride, 1)
    _, _, best = next(windows)  # tap (0, 0)
    idx = jnp.zeros(best.shape, jnp.int8)
    for i, j, window in windows:
        better = (window > best) | jnp.isnan(window)
        best, idx = jnp.where(better, window, best), jnp.where(better, jnp.int8(3 * i + j), idx)
    return best, idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_shift(x, stride, h, w):
    """Max pool as shifted maxima. The VJP keeps only the int8 tap index and routes each output's gradient
    to its tap through shifted selects: no select-and-scatter, no saved input. (h, w): the input size."""
    return _max_pool_taps(x, stride)[0]


def _max_pool_shift_fwd(x, stride, h, w):
    return _max_pool_taps(x, stride)  # (output, residual: the int8 tap index)


def _max_pool_shift_bwd(stride, h, w, idx, g):
    taps = _input_windows(idx, (h, w), 3, stride, 1, 1, -1)
    windows = _input_windows(g, (h, w), 3, stride, 1, 1, 0)
    terms = (jnp.where(tap == 3 * i + j, window, 0) for (i, j, tap), (_, _, window) in zip(taps, windows))
    return (functools.reduce(jnp.add, terms),)


_max_pool_shift.defvjp(_max_pool_shift_fwd, _max_pool_shift_bwd)


def _avg_pool_shift(x, stride):
    """3x3 average pool (padding 1, count_include_pad=False) as a shift depthwise conv with a constant
    kernel of ones (its dead kernel gradient is dropped by XLA), divided by the static window counts."""
    h, w = x.shape[1:3]
    counts = [np.array([sum(0 <= o * stride + t - 1 < size for t in range(3))
                        for o in range(_shift_out_size(size, 3, stride, 1, 1))], np.float32) for size in (h, w)]
    kernel = jnp.ones((3, 3, 1, x.shape[-1]), x.dtype)
    return _depthwise_shift(x, kernel, stride, 1, 1) / np.outer(*counts)[None, :, :, None].astype(x.dtype)


class DepthwiseConv(nn.Module):
    """Per-channel k x k convolution; kernel stored HWIO as (k, k, 1, C) like a grouped nn.Conv."""

    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    impl: str = 'conv'

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        k = self.kernel_size
        kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        kernel = kernel.astype(x.dtype)
        if self.impl == 'shift':
            return _depthwise_shift(x, kernel, self.stride, self.padding, self.dilation)
        if self.impl != 'conv':
            raise ValueError(f'depthwise impl {self.impl!r}; allowed: {DEPTHWISE_IMPLS}')
        p = self.padding
        return jax.lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), ((p, p), (p, p)),
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)


class ReLUConvBN(nn.Module):
    C_out: int
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    affine: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(x)
        x = conv(self.C_out, self.kernel_size, self.stride, self.padding, name='conv')(x)
        return batch_norm(train, self.affine, name='bn')(x)


class DilConv(nn.Module):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    C_out: int
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    affine: bool = True
    depthwise_impl: str = 'conv'

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(x)
        x = DepthwiseConv(self.kernel_size, self.stride, self.padding, self.dilation,
                          self.depthwise_impl, name='dw')(x)
        x = conv(self.C_out, 1, name='pw')(x)
        return batch_norm(train, self.affine, name='bn')(x)


class SepConv(nn.Module):
    """Two stacked DilConv(dilation=1); only the first one strides (DARTS)."""

    C_out: int
    kernel_size: int
    stride: int
    padding: int
    affine: bool = True
    depthwise_impl: str = 'conv'

    @nn.compact
    def __call__(self, x, train: bool):
        c_in = x.shape[-1]
        x = DilConv(c_in, self.kernel_size, self.stride, self.padding, 1, self.affine,
                    self.depthwise_impl, name='op1')(x, train)
        return DilConv(self.C_out, self.kernel_size, 1, self.padding, 1, self.affine,
                       self.depthwise_impl, name='op2')(x, train)


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return x


class Zero(nn.Module):
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset 1x1 stride-2 convs, concatenated (C_out must be even)."""

    C_out: int
    affine: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        if self.C_out % 2:
            raise ValueError(f'FactorizedReduce needs an even channel count, got {self.C_out}')
        x = nn.relu(x)
        a = conv(self.C_out // 2, 1, 2, name='conv1')(x)
        b = conv(self.C_out // 2, 1, 2, name='conv2')(x[:, 1:, 1:, :])
        return batch_norm(train, self.affine, name='bn')(jnp.concatenate([a, b], axis=-1))


class Pool(nn.Module):
    """3x3 max or average pool, padding 1; average excludes the padding (count_include_pad=False).

    with_bn: the search cells follow pools with a non-affine BN (DARTS MixedOp). impl: XLA's
    reduce-window ('conv', as the depthwise form's name) or shifted slices ('shift', faster on CPU).
    """

    kind: str
    stride: int = 1
    with_bn: bool = False
    impl: str = 'conv'

    @nn.compact
    def __call__(self, x, train: bool):
        if self.impl not in DEPTHWISE_IMPLS:
            raise ValueError(f'pool impl {self.impl!r}; allowed: {DEPTHWISE_IMPLS}')
        if self.impl == 'shift':
            x = (_max_pool_shift(x, self.stride, *x.shape[1:3]) if self.kind == 'max'
                 else _avg_pool_shift(x, self.stride))
        else:
            pool = nn.max_pool if self.kind == 'max' else functools.partial(nn.avg_pool, count_include_pad=False)
            x = pool(x, (3, 3), strides=(self.stride, self.stride), padding=((1, 1), (1, 1)))
        if self.with_bn:
            x = batch_norm(train, affine=False, name='bn')(x)
        return x


def make_op(primitive: str, C: int, stride: int, affine: bool, *, search: bool = False,
            depthwise_impl: str = 'conv', name: str | None = None) -> nn.Module:
    """Builds one DARTS or NAS-Bench-201 primitive. `search=True` adds the BN after pools as DARTS' MixedOp
    does (NAS-Bench-201's pools have none: its cells pass search=False, in search and in evaluation)."""
    kw = dict(affine=affine, depthwise_impl=depthwise_impl, name=name)
    if primitive == 'nor_conv_1x1':
        return ReLUConvBN(C, 1, stride, 0, affine=affine, name=name)
    if primitive == 'nor_conv_3x3':
        return ReLUConvBN(C, 3, stride, 1, affine=affine, name=name)
    if primitive == 'none':
        return Zero(stride, name=name)
    if primitive == 'max_pool_3x3':
        return Pool('max', stride, with_bn=search, impl=depthwise_impl, name=name)
    if primitive == 'avg_pool_3x3':
        return Pool('avg', stride, with_bn=search, impl=depthwise_impl, name=name)
    if primitive == 'skip_connect':
        return Identity(name=name) if stride == 1 else FactorizedReduce(C, affine, name=name)
    if primitive == 'sep_conv_3x3':
        return SepConv(C, 3, stride, 1, **kw)
    if primitive == 'sep_conv_5x5':
        return SepConv(C, 5, stride, 2, **kw)
    if primitive == 'dil_conv_3x3':
        return DilConv(C, 3, stride, 2, 2, **kw)
    if primitive == 'dil_conv_5x5':
        return DilConv(C, 5, stride, 4, 2, **kw)
    raise ValueError(f'unknown op {primitive!r}')
