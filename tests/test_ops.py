import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax.space.genotype import PRIMITIVES
from asose_jax.space.ops import DepthwiseConv, FactorizedReduce, Pool, batch_norm, make_op, pointwise


def _run(module, x, train=True):
    variables = module.init(jax.random.key(0), x, train=False)
    out, _ = module.apply(variables, x, train=train, mutable=['batch_stats'])
    return variables, out


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('primitive', PRIMITIVES)
def test_every_op_shape(primitive, stride):
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    _, out = _run(make_op(primitive, 4, stride, affine=False, search=True), x)
    assert out.shape == (2, 8 // stride, 8 // stride, 4)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_search_ops_have_no_affine_params():
    x = jnp.ones((2, 8, 8, 4))
    for p in PRIMITIVES:
        variables = make_op(p, 4, 1, affine=False, search=True).init(jax.random.key(0), x, train=False)
        bn_params = [path for path, _ in jax.tree_util.tree_leaves_with_path(variables.get('params', {}))
                     if 'bn' in jax.tree_util.keystr(path)]
        assert bn_params == [], p
    # pools are followed by a non-affine BN in search cells, not in fixed cells
    assert 'batch_stats' in make_op('max_pool_3x3', 4, 1, False, search=True).init(jax.random.key(0), x, train=False)
    assert 'batch_stats' not in make_op('max_pool_3x3', 4, 1, True).init(jax.random.key(0), x, train=False)


def test_avg_pool_excludes_padding():
    x = jnp.ones((1, 4, 4, 1))
    out = Pool('avg', 1).apply({}, x, train=False)
    np.testing.assert_allclose(np.asarray(out), 1.0)  # a padded corner would give 4/9


def test_max_pool_pads_with_minus_infinity():
    x = -jnp.ones((1, 4, 4, 1))
    out = Pool('max', 2).apply({}, x, train=False)
    np.testing.assert_allclose(np.asarray(out), -1.0)


def test_batchnorm_matches_torch_conventions():
    """torch BatchNorm2d(momentum=0.1, eps=1e-5): running = 0.9 * running + 0.1 * batch (flax keeps the
    biased batch variance; torch stores the unbiased one, converted in parity/)."""
    x = jax.random.normal(jax.random.key(2), (4, 4, 4, 2)) * 3 + 1
    bn = batch_norm(train=True, affine=False)
    variables = bn.init(jax.random.key(0), x)
    out, upd = bn.apply(variables, x, mutable=['batch_stats'])
    xs = np.asarray(x, np.float64).reshape(-1, 2)
    np.testing.assert_allclose(upd['batch_stats']['mean'], 0.1 * xs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(upd['batch_stats']['var'], 0.9 + 0.1 * xs.var(0), rtol=1e-5)
    expect = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 2), expect, atol=1e-4)
    assert 'params' not in variables


@pytest.mark.parametrize('k, stride, pad, dil', [(3, 1, 1, 1), (5, 2, 2, 1), (3, 2, 2, 2), (5, 1, 4, 2)])
@pytest.mark.parametrize('size', [8, 7])
def test_depthwise_shift_equals_grouped_conv(k, stride, pad, dil, size):
    """Outputs and both gradients (the shift form's custom VJP) match XLA's grouped conv, odd sizes too."""
    x = jax.random.normal(jax.random.key(3), (2, size, size, 4))
    conv = DepthwiseConv(k, stride, pad, dil, impl='conv')
    variables = conv.init(jax.random.key(0), x)
    shift = DepthwiseConv(k, stride, pad, dil, impl='shift')
    np.testing.assert_allclose(np.asarray(conv.apply(variables, x)), np.asarray(shift.apply(variables, x)), atol=1e-5)

    def grads(module):
        return jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), argnums=(0, 1))(variables, x)

    (dv_conv, dx_conv), (dv_shift, dx_shift) = grads(conv), grads(shift)
    np.testing.assert_allclose(np.asarray(dx_conv), np.asarray(dx_shift), atol=1e-5)
    np.testing.assert_allclose(np.asarray(dv_conv['params']['kernel']), np.asarray(dv_shift['params']['kernel']),
                               rtol=1e-5, atol=1e-5)


@functools.cache
def _shift_5x5_gradient():
    """(input, compiled gradient) of a 5x5 `shift` depthwise conv, compiled once for the tests below."""
    x = jnp.zeros((8, 16, 16, 8))
    module = DepthwiseConv(5, 1, 2, 1, impl='shift')
    variables = module.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2), argnums=(0, 1)))
    return x, grad.lower(variables, x).compile()


def test_depthwise_shift_backward_keeps_no_shifted_copies():
    """The shift form's gradient holds a few activations of temporary memory, not one per tap (a 5x5
    kernel has 25; plain autodiff kept them all, which ran the DARTS-shape step out of memory)."""
    x, compiled = _shift_5x5_gradient()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 6 * x.nbytes, (temp, x.nbytes)


def test_depthwise_shift_kernel_gradient_is_one_fused_pass():
    """All k*k taps of the kernel gradient are summed in one fusion (per-image sums, one per tap) that reads
    x and g directly: no per-tap loop or materialised window (a tap-at-a-time loop ran the CPU DilConv
    gradient 1.42x slower, bench/RESULTS.md)."""
    hlo = _shift_5x5_gradient()[1].as_text()
    out_types = [line.split(' = ', 1)[1].split(' fusion(', 1)[0] for line in hlo.splitlines()
                 if ' fusion(' in line and ' = ' in line]
    fused = [t for t in out_types if t.count('f32[8,8]') == 25]  # a tuple of 25 per-image [N, C] sums
    assert len(fused) == 1, hlo
    assert ' while(' not in hlo and 'dynamic-slice' not in hlo


@pytest.mark.parametrize('kind', ['max', 'avg'])
@pytest.mark.parametrize('stride, size', [(1, 8), (2, 8), (1, 7), (2, 7)])
def test_shift_pools_equal_reduce_window(kind, stride, size):
    """The shift pools give XLA's reduce-window values and input gradients (ties in a max window go to
    the first tap, as both XLA and torch do), odd sizes too; the max pool's NaN propagates."""
    x = jax.random.normal(jax.random.key(size + stride), (2, size, size, 3))
    x = x.at[0, 0, 0, 0].set(x[0, 0, 1, 0]).at[1, 2, 2, 1].set(x[1, 2, 3, 1])  # ties
    outs = []
    for impl in ('conv', 'shift'):
        y, vjp = jax.vjp(lambda x, impl=impl: Pool(kind, stride, impl=impl).apply({}, x, False), x)
        outs.append((y, vjp(jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape))[0]))
    np.testing.assert_allclose(np.asarray(outs[0][0]), np.asarray(outs[1][0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(outs[0][1]), np.asarray(outs[1][1]), atol=1e-6)
    assert float(jnp.abs(outs[1][1]).max()) > 0  # a gradient reaches the input
    if kind == 'max':
        y = Pool(kind, stride, impl='shift').apply({}, x.at[0, 3, 3, 0].set(jnp.nan), False)
        assert bool(jnp.isnan(y[0, 3 // stride, 3 // stride, 0]))


def test_shift_max_pool_backward_keeps_a_tap_index():
    """The shift max pool's VJP keeps an int8 tap index per output and needs no select-and-scatter:
    a few activations of temporary memory (3.2x the input; XLA's reduce-window gradient took 12.6x)."""
    x = jnp.zeros((8, 16, 16, 8))
    grad = jax.grad(lambda x: jnp.sum(Pool('max', 1, impl='shift').apply({}, x, False) ** 2))
    assert jax.jit(grad).lower(x).compile().memory_analysis().temp_size_in_bytes < 5 * x.nbytes
    assert 'select_and_scatter' not in str(jax.make_jaxpr(grad)(x))


def test_pool_rejects_an_unknown_impl():
    with pytest.raises(ValueError, match="pool impl 'fft'"):
        Pool('max', 1, impl='fft').apply({}, jnp.zeros((1, 4, 4, 2)), False)


@pytest.mark.parametrize('primitive, stride, n_1x1', [('sep_conv_3x3', 1, 2), ('dil_conv_5x5', 2, 1),
                                                      ('skip_connect', 2, 2)])
def test_pointwise_dot_equals_conv(primitive, stride, n_1x1):
    """pointwise('dot') computes each 1x1 conv (skip_connect at stride 2 is a FactorizedReduce) as a
    matmul with the conv's own parameter: same outputs and gradients, n_1x1 fewer convolutions."""
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 4))
    op = make_op(primitive, 4, stride, affine=True)
    variables = op.init(jax.random.key(0), x, train=False)

    def loss(params, impl):
        with pointwise(impl):
            out, _ = op.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
        return jnp.sum(jnp.sin(out)), out  # not sum(out ** 2): BN makes that a constant, its gradient noise

    (_, a), ga = jax.value_and_grad(loss, has_aux=True)(variables['params'], 'conv')
    (_, b), gb = jax.value_and_grad(loss, has_aux=True)(variables['params'], 'dot')
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-4)
    convs = {impl: str(jax.make_jaxpr(lambda p, i=impl: loss(p, i))(variables['params'])).count('conv_general_dilated')
             for impl in ('conv', 'dot')}
    assert convs['conv'] - convs['dot'] == n_1x1, convs
    with pytest.raises(ValueError, match='pointwise impl'):
        pointwise('matmul')


def test_factorized_reduce_needs_even_channels():
    with pytest.raises(ValueError, match='even'):
        FactorizedReduce(3).init(jax.random.key(0), jnp.ones((1, 4, 4, 2)), train=False)


def test_unknown_op():
    with pytest.raises(ValueError, match='unknown op'):
        make_op('conv_7x7', 4, 1, True)
