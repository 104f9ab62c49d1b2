"""NAS-Bench-201 growth (a stage widened by Net2Wider) is function-preserving: eval-mode logits agree to 1e-5
after widening each stage in turn (the stem with stage 0, the classifier with the last), optimizer moments are
replicated like their weights, the kinds the space cannot grow are refused by name, and the PyTorch twin of
the grown spec computes the same logits from the converted variables."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from asose_jax.growth import operations as growth
from asose_jax.growth import policy, surgery
from asose_jax.space.network import init_search_variables, search_network
from asose_jax.space.spec import NetworkSpec
from parity import compare
from test_growth import TOL, TXS, _randomise, assert_moments_widen_like_weights

SIZE = 8
# (kind, options): stage 1, then stage 0 (stem), then the automatic choice, then stage 2 (classifier)
CHAIN = (('width', {'stage': 1}), ('width', {'stage': 0}), ('width', {}), ('width', {'stage': 2, 'factor': 2.0}))


def random_nb201(seed: int):
    """A tiny NB201 supernet with every weight, BN statistic and optimizer moment away from its init."""
    rng = np.random.default_rng(seed)
    spec = NetworkSpec.nb201(C=4, cells_per_stage=1)
    v = init_search_variables(spec, jax.random.key(seed), SIZE)
    stats = jax.tree_util.tree_map_with_path(
        lambda p, x: (0.5 + rng.uniform(size=x.shape) if 'var' in jax.tree_util.keystr(p)
                      else 0.3 * rng.standard_normal(x.shape)).astype(np.float32), v['batch_stats'])
    v = {'params': _randomise(v['params'], rng), 'batch_stats': stats}
    return spec, v, tuple(_randomise(jax.eval_shape(tx.init, v['params']), rng, 0.1) for tx in TXS)


def eval_logits(spec, variables, x):
    ew = {'cell': jax.nn.softmax(variables['params']['arch']['cell'], -1)}
    return search_network(spec).apply({'params': variables['params']['weights'],
                                       'batch_stats': variables['batch_stats']}, x, ew, train=False)


@pytest.fixture(scope='module')
def chain():
    spec, v, opt = random_nb201(0)
    x = jax.random.normal(jax.random.key(1), (4, SIZE, SIZE, 3))
    records = []
    for n, (kind, options) in enumerate(CHAIN):
        grown = growth.grow(kind, spec, v, opt, jax.random.key(n), txs=TXS, **options)
        diff = float(jnp.max(jnp.abs(eval_logits(spec, v, x) - eval_logits(grown.spec, grown.variables, x))))
        records.append(dict(spec=spec, v=v, opt=opt, grown=grown, diff=diff, x=x))
        spec, v, opt = grown.spec, grown.variables, grown.opt_states
    return records


def test_every_stage_widens_function_preserving(chain):
    widened = []
    for r in chain:
        assert r['diff'] <= TOL, (r['grown'].event, r['diff'])
        before, after = r['spec'], r['grown'].spec
        stage = r['grown'].event['stage']
        changed = {level for a, b, level in zip(before.cells, after.cells, before.levels) if a.C != b.C}
        assert changed == {stage}, (changed, r['grown'].event)
        assert (after.stem_C != before.stem_C) == (stage == 0)
        assert r['grown'].event['params_after'] > r['grown'].event['params_before']
        widened.append(stage)
    assert sorted(set(widened)) == [0, 1, 2], widened
    assert chain[2]['grown'].event['stage'] == 2  # auto: stage 2 is then the narrowest per doubling


def test_moments_replicated_like_weights(chain):
    """With every momentum trace equal to its weights, the widened moments equal the widened weights."""
    widened = assert_moments_widen_like_weights(chain[0]['spec'], chain[0]['v'], stage=1)
    assert widened > 10, widened


def test_other_kinds_refused_by_name():
    spec, v, opt = random_nb201(1)
    for kind in ('depth', 'branch', 'attention'):
        with pytest.raises(growth.GrowthSkipped, match=f'{kind}: a nb201 network grows only by'):
            growth.grow(kind, spec, v, opt, jax.random.key(0), txs=TXS)
    assert policy.candidates('auto', spec, [], []) == ['width']
    assert policy.candidates('auto', spec, [{'acc': 0.9, 'val_acc': 0.5}], []) == ['regularise', 'width']


def test_torch_twin_of_grown_spec_agrees(chain):
    last = chain[-1]
    spec, variables = last['grown'].spec, last['grown'].variables
    model = compare.torch_model(spec, variables).eval()
    with torch.no_grad():
        ew = {'cell': torch.softmax(compare.to_torch(variables['params']['arch']['cell']), -1)}
        torch_logits = model(compare.nchw(last['x']), ew).numpy()
    assert compare.max_diff(torch_logits, eval_logits(spec, variables, last['x'])) <= TOL


def test_growth_payoff_bench_grows_widens_and_resumes_nb201(tmp_path):
    """bench/growth_payoff.py on the tiny NB201 search with a width growth after search epoch 0: the growing
    run widens stage 0 with unchanged logits, the fixed run searches longer by what the growth cost, both are
    judged by the ground truth, and the grown run resumes from its checkpoint on the widened network."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
    from asose_jax.benchmarks import nats_bench
    from bench import growth_payoff, search_quality
    config = os.path.join(os.path.dirname(__file__), 'nb201_tiny_config.py')
    result = growth_payoff.main(['--config', config, '--seeds', '0', '--set', 'growth.trigger=schedule',
                                 '--set', 'growth.schedule=0:width', '--out', str(tmp_path),
                                 '--cache', jax.config.jax_compilation_cache_dir])
    grown, fixed = result['runs']
    (event,) = grown['growths']
    assert event['kind'] == 'width' and event['max_logit_change'] <= TOL and event['params_after'] > event['params_before']
    assert not fixed['growths'] and fixed['search_epochs'] == 2 + growth_payoff.extra_epochs(grown)
    for r in (grown, fixed):
        assert r['result'] == pytest.approx(nats_bench.ground_truth(r['nb201_arch'])['cifar10_test'])
        assert 0 < r['compile_s'] and 0 < r['search_s']
    with open(tmp_path / 'growing_seed0' / 'spec.json') as f:
        assert json.load(f)['stem_C'] == 6  # 4 * 1.5
    c = search_quality.load_config(config, ['growth.trigger=schedule', 'growth.schedule=0:width'])
    again = search_quality.search_seed(c, 0, str(tmp_path / 'growing_seed0'), reuse=True)
    assert again['nb201_arch'] == grown['nb201_arch']


def test_copies_of_a_widened_channel_train_apart():
    """The copies of one channel get unequal shares of its outgoing weights, so their gradients differ and
    training can make them distinct: with equal shares the widened network would stay the narrow one."""
    spec, v, opt = random_nb201(2)
    grown = growth.grow('width', spec, v, opt, jax.random.key(0), txs=TXS, stage=1)
    block = next(f'cell{i}' for i, (c, level) in enumerate(zip(spec.cells, spec.levels)) if c.reduction and level == 1)
    copies = [j for j, c in enumerate(surgery.ChannelMap.widen(8, 12).idx) if c == 0]
    x = jax.random.normal(jax.random.key(3), (4, SIZE, SIZE, 3))

    def loss(weights):
        return jnp.sum(eval_logits(grown.spec, {**grown.variables, 'params': {**grown.variables['params'],
                                                                                 'weights': weights}}, x) ** 2)
    g = np.asarray(jax.grad(loss)(grown.variables['params']['weights'])[block]['conv_a']['conv']['kernel'])
    kernel = np.asarray(grown.variables['params']['weights'][block]['conv_a']['conv']['kernel'])
    assert len(copies) == 2 and np.array_equal(kernel[..., copies[0]], kernel[..., copies[1]])  # replicated
    assert not np.allclose(g[..., copies[0]], g[..., copies[1]], rtol=1e-3, atol=0), 'copies get equal gradients'
