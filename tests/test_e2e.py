"""All phases end to end on real CIFAR-10 images (../shared/data/cifar10-subset). Growth during a run
(events, function preservation, resume of a grown run) is checked on the tiny synthetic run of
tests/test_checkpoint.py, which costs a fraction of this one."""
import json
import os

import jax
import pytest

from asose_jax.run import retrain
from asose_jax.train import run
from test_config import _load


@pytest.fixture
def optimized_optimize_phase(monkeypatch):
    """The search phases stay unoptimised (conftest: they compile faster and run few steps); the
    derived network trains with XLA optimisations on (one program, five epochs)."""
    inner = retrain.optimize_phase

    def optimize_phase(*args, **kwargs):
        jax.config.update('jax_disable_most_optimizations', False)
        try:
            return inner(*args, **kwargs)
        finally:
            jax.config.update('jax_disable_most_optimizations', True)
    monkeypatch.setattr(retrain, 'optimize_phase', optimize_phase)


@pytest.mark.e2e
def test_smoke_search_learns(subset_dir, tmp_path, optimized_optimize_phase):
    c = _load('cifar10', 'smoke')  # 16x16, C=4, 3 cells
    c.data.dir = subset_dir
    c.search.warmup_epochs, c.search.search_epochs = 1, 1
    c.growth.trigger = 'none'
    c.data.max_train = 1024
    c.data.max_test = 512
    c.optimize.C = 8
    c.optimize.layers = 3
    c.optimize.epochs = 5
    c.progress = False
    summary = run(c, str(tmp_path))
    for name in ('config.json', 'metrics.jsonl', 'genotype.json', 'spec.json', 'summary.json',
                 'genotypes/warmup_epoch000.json', 'genotypes/search_epoch000.json'):
        assert os.path.exists(tmp_path / name), name
    lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    records = [r for r in lines if 'event' not in r]
    assert [r['phase'] for r in records] == ['warmup', 'search'] + ['optimize'] * 5
    for key in ('loss', 'acc', 'val_loss', 'val_acc', 'tau', 'arch_entropy', 'skip_count', 'images_per_sec'):
        assert key in records[1], key
    assert 0 < records[1]['arch_entropy'] <= 2.08 + 1e-6  # <= log(8)
    assert summary['val_acc'] >= 0.2, summary  # chance is 0.1
