"""The NAS-Bench-201 space: arch strings, derivation, the ground-truth table, the network, and a tiny
search run through the same phases, checkpoints and summary as the DARTS space (synthetic data)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax.benchmarks import nats_bench
from asose_jax.run.config import ConfigError, nb201_config, validate
from asose_jax.space.genotype import load_genotype
from asose_jax.space.nb201_genotype import EDGES, NB201_OPS, NB201Genotype, derive_nb201, random_nb201
from asose_jax.space.network import init_search_variables, search_network, uniform_edge_weights
from asose_jax.space.spec import NetworkSpec

BEST = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'


def test_arch_string_round_trip():
    g = NB201Genotype.from_string(BEST)
    assert str(g) == BEST
    assert g.ops == ('nor_conv_3x3', 'nor_conv_3x3', 'nor_conv_3x3', 'skip_connect', 'nor_conv_3x3', 'nor_conv_3x3')
    assert NB201Genotype.from_dict(g.to_dict()) == g
    assert load_genotype(BEST) == g
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = random_nb201(rng)
        assert NB201Genotype.from_string(str(r)) == r


@pytest.mark.parametrize('text, fragment', [
    ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|', 'expected 3 nodes'),
    ('|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|', 'node 2 needs 2 edges'),
    ('|conv_7x7~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|', "unknown op 'conv_7x7'"),
    ('|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|', 'must read node 0'),
    ('|nor_conv_3x3|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|', 'is not op~src'),
    ('nor_conv_3x3~0+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|', 'must look like'),
])
def test_malformed_arch_string_names_the_problem(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        NB201Genotype.from_string(text)


def test_derive_takes_each_edge_argmax_and_caps_skip():
    logits = np.zeros((len(EDGES), len(NB201_OPS)))
    wanted = [3, 3, 1, 1, 0, 4]
    logits[np.arange(6), wanted] = [2.0, 2.0, 3.0, 1.0, 2.0, 2.0]
    logits[3, 2] = 0.5  # edge 3's runner-up
    g = derive_nb201(logits)
    assert g.ops == tuple(NB201_OPS[k] for k in wanted)
    capped = derive_nb201(logits, max_skip=1)  # edge 3 holds the weaker skip: it takes its runner-up
    assert capped.ops[2] == 'skip_connect' and capped.ops[3] == 'nor_conv_1x1'
    with pytest.raises(ValueError, match='shape'):
        derive_nb201(logits[:5])


def test_ground_truth_table_lookup():
    truth = nats_bench.ground_truth(BEST)
    table = nats_bench.load()
    acc = table.accuracy['cifar10']
    assert len(table.archs) == nats_bench.NUM_ARCHS
    assert truth['cifar10_test'] == pytest.approx(acc[table.index[BEST]])
    assert truth['cifar10_test'] > np.percentile(acc, 99)  # one of the benchmark's best cells
    all_skip = '|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|'
    assert nats_bench.ground_truth(all_skip)['cifar10_percentile'] < truth['cifar10_percentile']
    with pytest.raises(KeyError, match='not an architecture'):
        table.lookup('|none~0|+|none~0|none~1|')


def test_missing_table_is_one_line_not_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(nats_bench.ENV_TABLE, str(tmp_path / 'nowhere'))
    nats_bench.load.cache_clear()
    try:
        assert nats_bench.ground_truth(BEST) is None
        assert nats_bench.summary_fields(NB201Genotype.from_string(BEST)) == {'nb201_arch': BEST}
    finally:
        nats_bench.load.cache_clear()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and 'unavailable' in out[0]


def test_corrupt_table_is_an_error(tmp_path):
    path = tmp_path / 'nats_tss_200ep.csv'
    path.write_text('arch,cifar10_test,cifar100_test,imagenet16_120_test\n' + f'{BEST},94.0,73.0,46.0\n')
    with pytest.raises(ValueError, match='1 rows, expected 15625'):
        nats_bench.read_csv(str(path))


def test_macro_network_and_shared_logits():
    spec = NetworkSpec.nb201(C=4, cells_per_stage=2)
    assert [c.C for c in spec.cells] == [4, 4, 8, 8, 8, 16, 16, 16]
    assert [c.reduction for c in spec.cells] == [False, False, True, False, False, True, False, False]
    v = init_search_variables(spec, jax.random.key(0), 8)
    assert {k: a.shape for k, a in v['params']['arch'].items()} == {'cell': (6, 5)}
    w = v['params']['weights']
    # one scanned body per stage: edge params stacked over the stage's 2 cells
    assert w['cells0_1']['edge3_2']['nor_conv_3x3']['conv']['kernel'].shape == (2, 3, 3, 4, 4)
    assert set(w['cell2']) == {'conv_a', 'conv_b', 'downsample'}
    net = search_network(spec)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = {'params': w, 'batch_stats': v['batch_stats']}
    one_hot = {'cell': jax.nn.one_hot(jnp.array([3, 2, 0, 1, 4, 3]), 5)}
    mixture = net.apply(variables, x, one_hot, train=False)
    single = net.apply(variables, x, one_hot, train=False, single_path=True)
    assert mixture.shape == (2, 10)
    np.testing.assert_allclose(single, mixture, atol=1e-5)  # a one-hot mixture is the single path
    other = net.apply(variables, x, {'cell': jax.nn.one_hot(jnp.array([3, 2, 0, 1, 4, 1]), 5)}, train=False)
    assert float(jnp.max(jnp.abs(other - mixture))) > 1e-4  # the edge weights reach the output
    uniform = net.apply(variables, x, uniform_edge_weights(spec), train=False)
    assert np.all(np.isfinite(np.asarray(uniform)))


def test_nb201_config_rules():
    c = nb201_config(None)
    validate(c)
    assert (c.model.C, c.model.cells_per_stage, c.search.search_epochs, c.data.train_portion) == (16, 5, 250, 0.5)
    c.model.primitives = ['sep_conv_3x3']
    with pytest.raises(ConfigError, match='model.primitives'):
        validate(c)
    c = nb201_config('smoke')
    c.growth.trigger = 'schedule'
    c.growth.schedule = '0:depth'
    with pytest.raises(ConfigError, match=r"growth.schedule='0:depth'.*model.space='nb201' network can grow"):
        validate(c)
    c.growth.schedule = '0:width'
    validate(c)


def _tiny_nb201(workdir=None):
    from nb201_tiny_config import get_config
    return get_config()


def test_search_run_writes_nb201_arch_and_ground_truth(tmp_path):
    from asose_jax.train import run
    workdir = str(tmp_path / 'run')
    summary = run(_tiny_nb201(workdir), workdir)
    arch = summary['nb201_arch']
    assert str(NB201Genotype.from_string(arch)) == arch
    assert summary['cifar10_test'] == pytest.approx(nats_bench.ground_truth(arch)['cifar10_test'])
    assert 0.0 <= summary['cifar10_percentile'] <= 100.0 and 'imagenet16_120_test' in summary
    with open(os.path.join(workdir, 'genotype.json')) as f:
        assert json.load(f)['nb201_arch'] == arch
    with open(os.path.join(workdir, 'summary.json')) as f:
        assert json.load(f)['nb201_arch'] == arch
    lines = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
    search = [r for r in lines if r.get('phase') == 'search' and 'event' not in r]
    assert len(search) == 2 and 'op_weight/cell/nor_conv_3x3' in search[-1]
    assert [r['phase'] for r in lines if 'event' not in r][-1] == 'optimize'
    # a finished run resumes at its end from the optimize-phase checkpoint (same genotype, nothing redone)
    again = run(_tiny_nb201(workdir), workdir)
    assert again['nb201_arch'] == arch


def test_evaluate_trains_an_arch_string_and_rejects_a_malformed_one(tmp_path):
    from asose_jax.evaluate import load_exported, run_evaluation
    c = _tiny_nb201(str(tmp_path))
    summary = run_evaluation(c, BEST, str(tmp_path / 'eval'))
    assert summary['nb201_arch'] == BEST and summary['cifar10_test'] > 94.0
    assert summary['params'] > 0 and summary['macs'] > 0 and np.isfinite(summary['test_acc'])
    model, variables, genotype = load_exported(summary['export'])
    assert genotype == NB201Genotype.from_string(BEST)
    logits, _ = model.apply(variables, jnp.zeros((1, 8, 8, 3)), train=False)
    assert logits.shape == (1, 10)
    with pytest.raises(ConfigError, match='--genotype: NB201 arch string .* unknown op'):
        run_evaluation(c, BEST.replace('skip_connect', 'skip_conect'), str(tmp_path / 'bad'))
    assert not os.path.exists(tmp_path / 'bad')  # nothing written for a bad argument


def test_search_quality_bench_judges_each_seed_by_the_ground_truth(tmp_path):
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
    from bench import search_quality
    config = os.path.join(os.path.dirname(__file__), 'nb201_tiny_config.py')
    result = search_quality.main(['--config', config, '--seeds', '0,1', '--out', str(tmp_path)])
    archs = [s['nb201_arch'] for s in result['seeds']]
    truth = [nats_bench.ground_truth(a)['cifar10_test'] for a in archs]
    assert result['judge']['searched_cifar10_test']['mean'] == pytest.approx(np.mean(truth))
    assert result['judge']['searched_cifar10_test']['min'] == pytest.approx(min(truth))
    assert set(result['supernet_val_gain']) == {'mean', 'min', 'max', 'std'}
    assert os.path.exists(tmp_path / 'search_quality.png')
    with open(tmp_path / 'search_quality.json') as f:
        assert json.load(f)['seeds'][1]['seed'] == 1


def test_sweep_runs_nb201_members_in_one_program(tmp_path):
    from asose_jax import sweep
    c = _tiny_nb201()
    c.search.update(warmup_epochs=0, search_epochs=1)
    c.sweep.seeds, c.sweep.arch_lrs = 2, ''
    summary = sweep.run(c, str(tmp_path))
    assert summary['num_members'] == 2
    for member in summary['members']:
        assert str(NB201Genotype.from_string(member['genotype'])) == member['genotype']
        assert np.isfinite(member['val_acc'])
