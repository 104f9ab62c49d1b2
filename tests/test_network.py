import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax.space.cells import MixedOp, SearchCell, materialized_cotangent
from asose_jax.space.genotype import Genotype
from asose_jax.space.network import (FixedNetwork, SearchNetwork, count_params, init_search_variables,
                               uniform_edge_weights)
from asose_jax.space.spec import NetworkSpec


@pytest.mark.parametrize('C, layers, expected', [(16, 8, 1_930_618), (8, 5, 394_210)])
def test_darts_reference_sizes(C, layers, expected):
    """Counts measured by running the DARTS code (model_search.Network, 10 classes)."""
    spec = NetworkSpec.darts(C=C, layers=layers)
    shapes = jax.eval_shape(lambda k: init_search_variables(spec, k), jax.random.key(0))
    assert count_params(shapes['params']['weights']) == expected
    assert {k: v.shape for k, v in shapes['params']['arch'].items()} == {'normal': (14, 8), 'reduce': (14, 8)}
    assert count_params(shapes['params']['arch']) == 224


@pytest.fixture(scope='module')
def tiny(tiny_spec):
    v = init_search_variables(tiny_spec, jax.random.key(0), image_size=8)
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    return tiny_spec, v, x


def test_single_path_equals_mixture_with_one_hot_weights(tiny):
    spec, v, x = tiny
    model = SearchNetwork(spec)
    ids = jax.random.randint(jax.random.key(2), (2, 14), 0, 8)
    w = {'normal': jax.nn.one_hot(ids[0], 8), 'reduce': jax.nn.one_hot(ids[1], 8)}
    variables = {'params': v['params']['weights'], 'batch_stats': v['batch_stats']}
    fast = model.apply(variables, x, w, train=False, single_path=True)
    full = model.apply(variables, x, w, train=False, single_path=False)
    assert fast.shape == (3, 10)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(full), atol=1e-5)
    uniform = model.apply(variables, x, uniform_edge_weights(spec), train=False)
    assert float(jnp.abs(uniform - full).max()) > 1e-4  # the weights matter


def test_fixed_network_with_auxiliary_head():
    g = Genotype(normal=(('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_3x3', 2), ('avg_pool_3x3', 0),
                         ('max_pool_3x3', 1), ('sep_conv_5x5', 3), ('dil_conv_5x5', 4), ('none', 0)),
                 normal_concat=(2, 3, 4, 5),
                 reduce=(('max_pool_3x3', 0), ('skip_connect', 1), ('skip_connect', 2), ('avg_pool_3x3', 1),
                         ('sep_conv_3x3', 0), ('dil_conv_3x3', 3), ('sep_conv_5x5', 4), ('max_pool_3x3', 1)),
                 reduce_concat=(2, 3, 4, 5))
    model = FixedNetwork(g, C=4, layers=3, auxiliary=True, drop_path_rate=0.2)
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x, train=False)
    assert 'aux_head' not in variables['params']  # created lazily in train mode only
    variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x, train=True)
    (logits, aux), _ = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)},
                                   mutable=['batch_stats'])
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    logits_eval, aux_eval = model.apply(variables, x, train=False)
    assert aux_eval is None and logits_eval.shape == (2, 10)


def _assert_same_results(a, b, rtol, atol):
    """Two ((loss, aux), (weight grads, edge-weight grads)) results agree, and the edge weights get a gradient."""
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    assert float(np.abs(a[1][1]).max()) > 0  # the edge weights get a gradient


@pytest.mark.parametrize('single_path', [False, True])
@pytest.mark.parametrize('depthwise', ['shift', 'conv'])
def test_remat_branch_keeps_values_and_gradients(depthwise, single_path):
    """model.remat_branch recomputes the ops (the mixture's every op, the single path's sampled one) in the
    backward pass: the same loss, gradients (weights and edge weights) and BN statistics. The single path
    takes less temporary memory (the switch no longer returns every branch's residuals). A lone mixed op
    of the mixture takes 1.1-1.3x more; its saving is in the cells' edge scans (the cell test below)."""
    prims = ('skip_connect', 'sep_conv_3x3', 'avg_pool_3x3')
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 4))
    w = jax.nn.one_hot(1, len(prims)) if single_path else jax.nn.softmax(jnp.array([0.3, -0.2, 0.5]))
    variables = MixedOp(4, 1, prims, depthwise).init(jax.random.key(0), x, w, False, single_path)

    def loss(params, w, op):
        out, upd = op.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, w, True, single_path,
                            mutable=['batch_stats'])
        return jnp.sum(out ** 2), upd

    results, temps = [], []
    for remat in (False, True):
        op = MixedOp(4, 1, prims, depthwise, remat_branch=remat)
        grad = jax.jit(jax.value_and_grad(lambda p, w_: loss(p, w_, op), argnums=(0, 1), has_aux=True))
        compiled = grad.lower(variables['params'], w).compile()
        results.append(jax.device_get(compiled(variables['params'], w)))
        temps.append(compiled.memory_analysis().temp_size_in_bytes)
    _assert_same_results(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert temps[1] < temps[0] or not single_path, temps


def _two_node_reduction_cell(single_path):
    """A reduction cell of 2 nodes (4 input edges, 1 node edge) and four ops, with its inputs, edge weights and
    variables: small enough for short compiles of its unrolled or rematerialised gradient."""
    prims = ('none', 'max_pool_3x3', 'skip_connect', 'sep_conv_3x3')
    s0, s1 = (jax.random.normal(jax.random.key(i), (2, 8, 8, 4)) for i in (0, 1))
    w = (jax.nn.one_hot(jnp.array([1, 2, 3, 3, 1]), 4) if single_path
         else jax.nn.softmax(jax.random.normal(jax.random.key(2), (5, 4))))
    cell = functools.partial(SearchCell, 4, True, False, prims, steps=2, multiplier=2)
    return cell, (s0, s1), w, cell().init(jax.random.key(3), s0, s1, w, True)


def _cell_gradients(model, inputs, w, variables, single_path):
    """(StableHLO text, the compiled program, ((loss, (output, BN update)), (weight grads, edge-weight grads)))
    of a train-mode cell."""
    def loss(params, w):
        out, upd = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, *inputs, w, True,
                               single_path, mutable=['batch_stats'])
        return jnp.sum(jnp.sin(out)), (out, upd)

    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)).lower(variables['params'], w)
    compiled = lowered.compile()
    return lowered.as_text(), compiled, jax.device_get(compiled(variables['params'], w))


@pytest.mark.parametrize('single_path', [False, True])
def test_unroll_edges_keeps_values_and_gradients(single_path):
    """model.unroll_edges unrolls a cell's edge scans over the same parameters: the same output, BN
    statistics and gradients (weights and edge weights), and no loop is left in the program."""
    cell, inputs, w, variables = _two_node_reduction_cell(single_path)
    (rolled, _, a), (unrolled, _, b) = (_cell_gradients(cell(unroll_edges=u), inputs, w, variables,
                                                        single_path) for u in (False, True))
    assert rolled.count('stablehlo.while') > 0 and unrolled.count('stablehlo.while') == 0
    _assert_same_results(a, b, rtol=1e-4, atol=1e-5)


def test_materialized_cotangent_changes_no_value_or_gradient():
    """The loop only moves where XLA computes the cotangent: the gradient is the plain one bit for bit, and a
    cotangent whose first element is NaN (the loop then runs no trip) passes through too."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(materialized_cotangent(x)) * x)))(x)
    np.testing.assert_array_equal(grad, jax.grad(lambda x: jnp.sum(jnp.sin(x) * x))(x))
    ct = jax.random.normal(jax.random.key(1), x.shape).at[0, 0, 0, 0].set(jnp.nan)
    value, vjp = jax.vjp(materialized_cotangent, x)
    np.testing.assert_array_equal(value, x)
    np.testing.assert_array_equal(jax.jit(vjp)(ct)[0], ct)


def _update_fusion_sizes(hlo_text: str, shape: str) -> list:
    """Instruction counts of the compiled fusions whose root is a dynamic-update-slice of `shape` (e.g.
    'f32[2,2,8,8,4]'): what XLA computes inside that in-place update."""
    sizes = []
    for computation in re.split(r'\n(?=\S)', hlo_text):
        lines = [line for line in computation.splitlines()[1:] if ' = ' in line]
        if any(line.lstrip().startswith('ROOT') and f'= {shape}' in line and 'dynamic-update-slice(' in line
               for line in lines):
            sizes.append(len(lines))
    return sizes


def test_materialize_edge_grads_leaves_the_loop_update_only_the_add():
    """model.materialize_edge_grads: the input edges' loop adds each edge's input gradient into the stacked cell
    inputs ([2, batch, 8, 8, 4] here) by an in-place dynamic-update-slice, which XLA's CPU runtime runs on one
    thread. Without the switch XLA computes the whole gradient (every op's backward) inside that update; with it,
    the update only adds (DARTS-shape mixture weight step with remat_branch: 1.16x the images/s). Same results.
    (With the `shift` depthwise, whose input gradient is elementwise and so fusable into the update.)"""
    cell, inputs, w, variables = _two_node_reduction_cell(False)
    (_, plain, a), (_, materialized, b) = (
        _cell_gradients(cell(depthwise_impl='shift', remat_branch=True, materialize_edge_grads=m), inputs, w,
                        variables, False) for m in (False, True))
    sizes = [_update_fusion_sizes(c.as_text(), 'f32[2,2,8,8,4]') for c in (plain, materialized)]
    assert sizes[0] and sizes[1], sizes  # the update exists in both programs
    # with: parameters, the accumulator's slice, the add and the update; without: every op's backward taps too
    assert max(sizes[1]) <= 10 and max(sizes[0]) > 4 * max(sizes[1]), sizes
    _assert_same_results(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('single_path', [False, True])
def test_remat_branch_in_a_cell_keeps_one_copy_of_the_inputs(single_path):
    """Under remat_branch the input edges index the cell inputs inside the rematerialised ops, so their scan
    keeps the stacked inputs as one loop-invariant residual, not a copy per edge (a 4-edge stack of 8x8 inputs
    here; DARTS shape, single-path weight step: 0.74x the temporary memory), and no op's activations. Same
    results as without it, in less temporary memory."""
    cell, inputs, w, variables = _two_node_reduction_cell(single_path)
    (_, plain, a), (text, remat, b) = (_cell_gradients(cell(remat_branch=r), inputs, w, variables, single_path)
                                       for r in (False, True))
    assert 'tensor<4x2x8x8x4xf32>' not in text
    plain_bytes, remat_bytes = (c.memory_analysis().temp_size_in_bytes for c in (plain, remat))
    assert remat_bytes < plain_bytes, (remat_bytes, plain_bytes)
    _assert_same_results(a, b, rtol=1e-5, atol=1e-6)
