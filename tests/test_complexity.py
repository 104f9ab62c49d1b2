"""Params and MACs counters: traced counts checked against hand counts and DARTS' published figures."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from asose_jax.space import complexity
from asose_jax.space.genotype import named_genotypes
from asose_jax.space.network import count_params, init_search_variables


@pytest.fixture(scope='module')
def darts_v2_cost():
    return complexity.fixed_network_complexity(named_genotypes()['DARTS_V2'], C=36, layers=20, image_size=32)


def test_darts_v2_matches_published(darts_v2_cost):
    """DARTS reports 3.3M parameters (auxiliary head excluded) and 528M MACs at 32x32."""
    cost = darts_v2_cost
    print(f"\nDARTS_V2 C=36 20 cells: {cost['params']:,} params without the auxiliary head, "
          f"{cost['params_with_aux']:,} with it, {cost['macs']:,} MACs at 32x32")
    assert abs(cost['params'] - 3.3e6) <= 0.1e6, cost
    assert abs(cost['macs'] - 528e6) <= 0.03 * 528e6, cost
    assert cost['params_aux'] > 0 and cost['params_with_aux'] == cost['params'] + cost['params_aux']


def test_conv_and_dense_macs_by_hand():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(8, (3, 3), padding='SAME', use_bias=False)(x)                    # 8*8 * 8 * 3*3*3
            x = nn.Conv(8, (3, 3), padding='SAME', feature_group_count=8, use_bias=False)(x)  # 8*8 * 8 * 9
            return nn.Dense(10)(x.reshape(x.shape[0], -1))                                 # 512 * 10

    x = jnp.zeros((1, 8, 8, 3))
    variables = jax.eval_shape(Net().init, jax.random.key(0), x)
    macs = complexity.jaxpr_macs(jax.make_jaxpr(Net().apply)(variables, x))
    assert macs == 64 * 8 * 27 + 64 * 8 * 9 + 512 * 10


def test_scan_bodies_count_length_times():
    w = jnp.zeros((4, 4))
    f = lambda x: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]
    assert complexity.jaxpr_macs(jax.make_jaxpr(f)(jnp.zeros((2, 4)))) == 5 * 2 * 4 * 4


def test_search_network_counts(tiny_spec):
    cost = complexity.search_network_complexity(tiny_spec, image_size=8)
    variables = jax.eval_shape(lambda k: init_search_variables(tiny_spec, k, 8), jax.random.key(0))
    assert cost['params'] == count_params(variables['params']['weights'])
    assert cost['arch_params'] == count_params(variables['params']['arch'])
    stem_macs = 8 * 8 * tiny_spec.stem_C * 27
    assert cost['macs'] > 10 * stem_macs  # cells' convs (inside the edge scans) are counted, not just the stem
