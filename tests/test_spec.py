import pytest

from asose_jax.space.spec import CellSpec, NetworkSpec


def test_darts_layout():
    spec = NetworkSpec.darts(C=16, layers=8)
    assert [c.reduction for c in spec.cells] == [False, False, True, False, False, True, False, False]
    assert [c.C for c in spec.cells] == [16, 16, 32, 32, 32, 64, 64, 64]
    assert spec.stem_C == 48 and spec.num_edges == 14 and spec.num_ops == 8


def test_json_round_trip_and_growth_history():
    spec = NetworkSpec.darts(C=4, layers=3)
    grown = spec.with_growth({'kind': 'depth', 'at': 1},
                             cells=spec.cells[:1] + (CellSpec(C=4, residual=True),) + spec.cells[1:])
    assert NetworkSpec.from_json(grown.to_json()) == grown
    assert grown.to_dict()['growth_history'] == [{'at': 1, 'kind': 'depth'}]
    assert hash(grown) != hash(spec)


@pytest.mark.parametrize('kwargs, msg', [
    (dict(primitives=('none', 'conv_9x9')), 'unknown ops'),
    (dict(primitives=('none', 'none')), 'duplicates'),
    (dict(multiplier=5), 'multiplier'),
])
def test_invalid(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        NetworkSpec.darts(C=4, layers=3, **kwargs)


def test_residual_cell_cannot_reduce():
    with pytest.raises(ValueError, match='residual'):
        NetworkSpec(cells=(CellSpec(C=4, reduction=True, residual=True),), stem_C=12)
