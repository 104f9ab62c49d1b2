import numpy as np
import pytest

from asose_jax.space.genotype import Genotype, PRIMITIVES, derive, num_edges

DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def test_num_edges():
    assert num_edges(4) == 14 and num_edges(2) == 5


def test_string_and_json_round_trip():
    g = Genotype.from_string(DARTS_V2)
    assert str(g) == DARTS_V2
    assert Genotype.from_string(str(g)) == g
    assert Genotype.from_json(g.to_json()) == g
    assert hash(g) == hash(Genotype.from_json(g.to_json()))


def test_darts_range_notation():
    g = Genotype.from_string(DARTS_V2.replace('[2, 3, 4, 5]', 'range(2, 6)'))
    assert g.normal_concat == (2, 3, 4, 5) and g == Genotype.from_string(DARTS_V2)


def test_frozen():
    g = Genotype.from_string(DARTS_V2)
    with pytest.raises(Exception):
        g.normal = ()


@pytest.mark.parametrize('bad, msg', [
    ({'normal': (('conv_7x7', 0), ('skip_connect', 1))}, 'unknown op'),
    ({'normal': (('skip_connect', 0), ('skip_connect', 2))}, 'does not exist'),
    ({'normal': (('skip_connect', 0),)}, 'two edges'),
])
def test_invalid_genotypes(bad, msg):
    base = dict(normal=(('skip_connect', 0), ('skip_connect', 1)), normal_concat=(2,),
                reduce=(('max_pool_3x3', 0), ('max_pool_3x3', 1)), reduce_concat=(2,))
    with pytest.raises(ValueError, match=msg):
        Genotype(**{**base, **bad})


def test_bad_strings():
    with pytest.raises(ValueError):
        Genotype.from_string('hello')
    with pytest.raises(ValueError):
        Genotype.from_string('Genotype(normal=[(')


def _alphas(choices):
    """Logits with a strong entry per (edge, op) in `choices`, zeros elsewhere."""
    a = np.zeros((14, len(PRIMITIVES)))
    for (edge, op), v in choices.items():
        a[edge, PRIMITIVES.index(op)] = v
    return a


def test_derive_hand_made():
    # node 0: edges 0,1; node 1: edges 2,3,4; node 2: 5..8; node 3: 9..13
    normal = _alphas({(0, 'sep_conv_3x3'): 3, (1, 'skip_connect'): 2,
                      (2, 'none'): 9, (3, 'dil_conv_5x5'): 1, (4, 'max_pool_3x3'): 2,
                      (5, 'avg_pool_3x3'): 1, (7, 'sep_conv_5x5'): 4, (8, 'skip_connect'): 3,
                      (9, 'dil_conv_3x3'): 5, (13, 'sep_conv_3x3'): 6})
    reduce = _alphas({(e, 'max_pool_3x3'): 1.0 + e for e in range(14)})
    g = derive(normal, reduce)
    # edge 2 has the largest logit but only on 'none', which derive ignores
    assert g.normal == (('sep_conv_3x3', 0), ('skip_connect', 1),
                        ('max_pool_3x3', 2), ('dil_conv_5x5', 1),
                        ('sep_conv_5x5', 2), ('skip_connect', 3),
                        ('sep_conv_3x3', 4), ('dil_conv_3x3', 0))
    assert g.reduce == (('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 2), ('max_pool_3x3', 1),
                        ('max_pool_3x3', 3), ('max_pool_3x3', 2), ('max_pool_3x3', 4), ('max_pool_3x3', 3))
    assert g.normal_concat == (2, 3, 4, 5)


def test_derive_rejects_bad_shapes_and_nan():
    with pytest.raises(ValueError, match='shape'):
        derive(np.zeros((13, 8)), np.zeros((14, 8)))
    bad = np.zeros((14, 8))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        derive(bad, np.zeros((14, 8)))
