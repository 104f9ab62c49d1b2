"""Genotype pictures: files are written and every edge is labelled with its op."""
import numpy as np

from asose_jax.report import visualize
from asose_jax.space.genotype import derive, named_genotypes, num_edges


def _labels(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_darts_v2_picture(tmp_path):
    g = named_genotypes()['DARTS_V2']
    paths = visualize.save_genotype_pictures(g, str(tmp_path), 'darts_v2', title='DARTS_V2')
    assert [p.rsplit('.', 1)[1] for p in paths] == ['png', 'svg']
    with open(paths[0], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert '<svg' in open(paths[1]).read()
    labels = _labels(visualize.genotype_figure(g))
    ops = [op for op, _ in g.normal + g.reduce]
    assert sorted(label for label in labels if label in set(ops)) == sorted(ops)
    assert labels.count(r'$c_{k}$') == 2 and labels.count(r'$c_{k-2}$') == 2


def test_search_result_picture(tmp_path):
    rng = np.random.default_rng(0)
    g = derive(rng.normal(size=(num_edges(4), 8)), rng.normal(size=(num_edges(4), 8)))
    (png,) = visualize.save_genotype_pictures(g, str(tmp_path), formats=('png',))
    assert png.endswith('genotype.png') and (tmp_path / 'genotype.png').stat().st_size > 10_000
    assert sum(label in {op for op, _ in g.normal + g.reduce} for label in _labels(visualize.genotype_figure(g))) == 16
