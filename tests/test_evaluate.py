"""Evaluation: genotype arguments, DARTS defaults, export round trip, and a smoke run on real images."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax import evaluate
from asose_jax.data.cifar import normalize
from asose_jax.report import monitor
from asose_jax.run import retrain
from asose_jax.run.config import ConfigError, validate
from asose_jax.space.genotype import load_genotype, named_genotype_info, named_genotypes
from test_config import _load


def test_named_genotypes_are_cited_and_valid():
    info, genotypes = named_genotype_info(), named_genotypes()
    assert {'DARTS_V1', 'DARTS_V2', 'GDAS_V1', 'PC_DARTS_cifar'} <= set(genotypes)
    for name, d in info.items():
        assert d['citation'] and d['published']['params_M'] > 0, name
        assert genotypes[name].steps == 4 and genotypes[name].normal_concat == (2, 3, 4, 5), name
    # spot checks against the papers' figures: DARTS_V2 reduction cell is pools + skips only
    assert genotypes['DARTS_V2'].count(['max_pool_3x3']) == 5 and genotypes['GDAS_V1'].normal[0] == ('skip_connect', 0)


def test_load_genotype_from_name_string_and_search_json(tmp_path):
    g = named_genotypes()['PC_DARTS_cifar']
    assert load_genotype('pc_darts_cifar') == g
    assert load_genotype(str(g)) == g
    monitor.save_genotype(str(tmp_path / 'genotype.json'), g, epoch=3)  # as a search run writes it
    assert load_genotype(str(tmp_path / 'genotype.json')) == g


@pytest.mark.parametrize('arg, problem', [
    ('DARTS_V3', 'neither a known name'),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2]", 'malformed genotype string'),
    ('/nonexistent/genotype.json', 'neither a known name'),
])
def test_bad_genotype_argument_lists_known_names(arg, problem):
    with pytest.raises(ValueError, match=problem) as e:
        load_genotype(arg)
    assert 'DARTS_V2' in str(e.value) and 'GDAS_V1' in str(e.value)


def test_bad_genotype_file(tmp_path):
    (tmp_path / 'g.json').write_text('{"normal": []}')
    with pytest.raises(ValueError, match='not a genotype JSON.*DARTS_V1'):
        load_genotype(str(tmp_path / 'g.json'))


def test_eval_config_follows_darts_protocol():
    c = _load('eval_cifar10')
    validate(c)
    cfg = retrain.FixedTrainConfig.from_config(c, 10)
    assert (cfg.C, cfg.layers, cfg.batch_size, cfg.epochs) == (36, 20, 96, 600)
    assert (cfg.lr, cfg.lr_min, cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (0.025, 0.0, 0.9, 3e-4, 5.0)
    assert (cfg.cutout, cfg.drop_path, cfg.auxiliary, cfg.aux_weight) == (16, 0.2, True, 0.4)
    validate(_load('eval_cifar10', 'smoke'))
    with pytest.raises(ConfigError, match='image_size >= 32'):
        retrain.check_auxiliary(cfg, 16)


def test_export_round_trip_gives_identical_logits(tmp_path):
    cfg = retrain.FixedTrainConfig(C=4, layers=3, auxiliary=False)
    g = named_genotypes()['DARTS_V1']
    model = cfg.model(g, depthwise_impl='conv')
    variables = jax.jit(lambda k: retrain.init_variables(model, k, 8))(jax.random.key(1))
    # non-trivial running statistics, as after training
    variables['batch_stats'] = jax.tree_util.tree_map(lambda x: x + 0.5, variables['batch_stats'])
    path = evaluate.export(str(tmp_path / 'export'), g, cfg, variables, 8)
    restored_model, restored, restored_g = evaluate.load_exported(path)
    assert restored_g == g
    chex_equal = jax.tree_util.tree_map(np.testing.assert_array_equal, variables, restored)
    assert chex_equal is not None
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])  # restored_model == model: one compile
    assert restored_model == model
    np.testing.assert_array_equal(apply(variables, x), apply(restored, x))


@pytest.fixture
def xla_optimizations():
    """Training-speed test: turn XLA optimisations back on (conftest turns them off)."""
    jax.config.update('jax_disable_most_optimizations', False)
    yield
    jax.config.update('jax_disable_most_optimizations', True)


@pytest.mark.e2e
def test_smoke_evaluation_of_darts_v2_learns(subset_dir, tmp_path, xla_optimizations):
    c = _load('eval_cifar10', 'smoke')
    c.data.dir = subset_dir
    c.data.max_train = 2048
    c.data.max_test = 512
    c.optimize.epochs = 3
    c.progress = False
    summary = evaluate.run_evaluation(c, 'DARTS_V2', str(tmp_path))
    for name in ('config.json', 'genotype.json', 'genotype.png', 'genotype.svg', 'metrics.jsonl', 'summary.json'):
        assert os.path.exists(tmp_path / name), name
    records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    assert [r['epoch'] for r in records] == [0, 1, 2] and all(r['phase'] == 'evaluate' for r in records)
    assert json.load(open(tmp_path / 'summary.json'))['test_acc'] == summary['test_acc']
    assert summary['params'] == records[-1]['params'] and summary['macs'] > 0
    assert summary['test_acc'] >= 0.2, summary  # chance is 0.1
    # the export restores to the same logits (shift and conv depthwise share parameters)
    model, variables, g = evaluate.load_exported(summary['export'], depthwise_impl='shift')
    assert g == named_genotypes()['DARTS_V2']
    x = normalize(jnp.zeros((2, 16, 16, 3), jnp.uint8) + 100)
    logits = model.apply(variables, x, train=False)[0]
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
