"""All phases end to end on real CIFAR-10 images (../shared/data/cifar10-subset)."""
import json
import os

import jax
import pytest

from asose_jax.train import run
from test_config import _load


@pytest.fixture
def xla_optimizations():
    """Training-speed test: turn XLA optimisations back on (conftest turns them off)."""
    jax.config.update('jax_disable_most_optimizations', False)
    yield
    jax.config.update('jax_disable_most_optimizations', True)


@pytest.mark.e2e
def test_smoke_search_learns(subset_dir, tmp_path, xla_optimizations):
    c = _load('cifar10', 'smoke')
    c.data.dir = subset_dir
    c.data.image_size = 16  # real images, average-pooled, to fit the CI budget
    c.data.max_train = 1536
    c.data.max_test = 512
    c.optimize.C = 8
    c.optimize.layers = 3
    c.optimize.epochs = 5
    c.progress = False
    summary = run(c, str(tmp_path))
    for name in ('config.json', 'metrics.jsonl', 'genotype.json', 'spec.json', 'summary.json',
                 'genotypes/warmup_epoch000.json', 'genotypes/search_epoch000.json'):
        assert os.path.exists(tmp_path / name), name
    records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    assert [r['phase'] for r in records] == ['warmup', 'search'] + ['optimize'] * 5
    for key in ('loss', 'acc', 'val_loss', 'val_acc', 'tau', 'arch_entropy', 'skip_count', 'images_per_sec'):
        assert key in records[1], key
    assert 0 < records[1]['arch_entropy'] <= 2.08 + 1e-6  # <= log(8)
    assert summary['val_acc'] >= 0.2, summary  # chance is 0.1
