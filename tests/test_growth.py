"""Growth is function-preserving: eval-mode logits before and after each operation agree to 1e-5,
the optimizer state of untouched leaves is carried over, and the grown network still trains."""
import dataclasses
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from asose_jax.growth import operations as growth
from asose_jax.growth import surgery
from asose_jax.search.optim import ArchOptConfig, WeightOptConfig, arch_transform, weight_transform
from asose_jax.search.steps import SearchStepConfig, make_search_steps
from asose_jax.search.train_state import TrainState
from asose_jax.space.genotype import PRIMITIVES, derive
from asose_jax.space.network import SearchNetwork, init_search_variables
from asose_jax.space.spec import NetworkSpec

TOL = 1e-5
SIZE = 8
TXS = (weight_transform(WeightOptConfig(), 100), arch_transform(ArchOptConfig()))
# the chain each random network goes through; every later op also sees the structure earlier ops made
CHAIN = (('depth', {}), ('attention', {}), ('branch', {}), ('width', {'factor': 1.5}),
         ('regularise', {'drop_path': 0.2, 'dropout': 0.3}), ('depth', {}))


def _randomise(tree, rng, scale=0.2):
    """Host-side noise on every float leaf (numpy: no per-leaf device dispatch)."""
    def noisy(x):
        x = np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            return x + 3  # step counts
        return (x + scale * rng.standard_normal(x.shape)).astype(x.dtype)
    return jax.tree_util.tree_map(noisy, tree)


def random_network(seed: int):
    """A random spec (2-3 cells, a missing primitive for add_branch), weights, BN statistics and
    optimizer moments, all far from their init values."""
    rng = np.random.default_rng(seed)
    prims = tuple(p for p in PRIMITIVES if p != PRIMITIVES[1 + seed % 7])
    spec = NetworkSpec.darts(C=4, layers=int(rng.integers(2, 4)), primitives=prims)
    v = init_search_variables(spec, jax.random.key(seed), SIZE)
    stats = jax.tree_util.tree_map_with_path(
        lambda p, x: (0.5 + rng.uniform(size=x.shape) if 'var' in jax.tree_util.keystr(p)
                      else 0.3 * rng.standard_normal(x.shape)).astype(np.float32), v['batch_stats'])
    v = {'params': _randomise(v['params'], rng), 'batch_stats': stats}
    opt = tuple(_randomise(jax.eval_shape(tx.init, v['params']), rng, 0.1) for tx in TXS)
    return spec, v, opt


@functools.lru_cache(maxsize=None)
def _logits_fn(spec):
    def f(variables, x):
        ew = {t: jax.nn.softmax(a, -1) for t, a in variables['params']['arch'].items()}
        return SearchNetwork(spec).apply({'params': variables['params']['weights'],
                                          'batch_stats': variables['batch_stats']}, x, ew, train=False)
    return jax.jit(f)


def eval_logits(spec, variables, x):
    """Eval-mode logits with the softmax mixture over all ops (every op's parameters matter)."""
    return _logits_fn(spec)(variables, x)


def _perturb_new(grown, key):
    """Make leaves that growth initialised at zero non-zero, as training would, so the next
    operation in the chain is tested on a network whose grown parts are active."""
    rng = np.random.default_rng(key)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: np.asarray(x) + np.float32(0.3) * rng.standard_normal(x.shape).astype(np.float32) if any(
            s in jax.tree_util.keystr(p) for s in ('_gate', '_se', "'gate_")) else x, grown.variables['params'])
    return dataclasses.replace(grown, variables={**grown.variables, 'params': params})


@pytest.fixture(scope='module')
def chain():
    """Runs CHAIN on one random network (each grown spec costs a compile); returns the per-op records."""
    spec, v, opt = random_network(0)
    x = jax.random.normal(jax.random.key(100), (8, SIZE, SIZE, 3))
    records = []
    for n, (kind, options) in enumerate(CHAIN):
        before = eval_logits(spec, v, x)
        grown = growth.grow(kind, spec, v, opt, jax.random.key(n), txs=TXS, **options)
        after = eval_logits(grown.spec, grown.variables, x)
        diff = float(jnp.max(jnp.abs(before - after)))
        print(f'{kind} {options}: max |logit diff| = {diff:.2e}, max |logit| {float(jnp.max(jnp.abs(before))):.1f} '
              f'({grown.event["params_before"]} -> {grown.event["params_after"]} weights)')
        records.append(dict(kind=kind, diff=diff, spec=spec, v=v, opt=opt, grown=grown))
        grown = _perturb_new(grown, n)
        spec, v, opt = grown.spec, grown.variables, grown.opt_states
    return records


def test_function_preserved(chain):
    for r in chain:
        assert r['diff'] <= TOL, f"{r['kind']}: max |logit diff| {r['diff']:.3e} > {TOL}"
        assert json.loads(r['grown'].spec.growth_history[-1])['kind'] == r['kind']


def _flat(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _old_key(key: str, pos):
    """The old name of an optimizer-state leaf after a deepen at `pos` (None: a new leaf)."""
    if pos is None:
        return key
    m = re.search(r"\['cell(\d+)(_gate|_se)?'\]", key)
    if m is None or int(m.group(1)) < pos:
        return key
    if int(m.group(1)) == pos:
        return None
    return key[:m.start()] + f"['cell{int(m.group(1)) - 1}{m.group(2) or ''}']" + key[m.end():]


def test_opt_state_carried_for_untouched_leaves(chain):
    """Leaves whose parameter is unchanged keep their moments bitwise (under their new names after
    a deepen); the moments of new leaves start at zero; step counts carry over."""
    for r in chain:
        if r['kind'] not in ('depth', 'attention', 'branch', 'regularise'):
            continue
        pos = r['grown'].event.get('position')
        for which, (old, new) in enumerate(zip(r['opt'], r['grown'].opt_states)):
            o, n = _flat(old), _flat(new)
            carried = fresh = 0
            for k, leaf in n.items():
                ok = _old_key(k, pos)
                if ok in o and not (r['kind'] == 'branch' and "['arch']" in k):
                    np.testing.assert_array_equal(np.asarray(o[ok]), np.asarray(leaf), err_msg=f"{r['kind']} {k}")
                    carried += 1
                elif ok not in o:
                    assert not np.any(np.asarray(leaf)), f"{r['kind']}: new moment {k} is not zero"
                    fresh += 1
            assert carried > 0 or (r['kind'] == 'branch' and which == 1), r['kind']
            if which == 0 and r['kind'] != 'regularise':  # the weight optimizer has moments of the new leaves
                assert fresh > 0, r['kind']


def assert_moments_widen_like_weights(spec, v, stage: int) -> int:
    """Sets every momentum trace equal to its weights, widens `stage` and asserts that the widened
    moments still equal the widened weights; returns how many of the compared leaves changed shape."""
    weights = traverse_util.flatten_dict(v['params'])

    def as_params(path, leaf):
        suffix = surgery.param_suffix(path)
        return weights[suffix] if suffix and suffix[0] == 'weights' else leaf

    opt = tuple(jax.tree_util.tree_map_with_path(as_params, tx.init(v['params'])) for tx in TXS)
    grown = growth.grow('width', spec, v, opt, jax.random.key(0), txs=TXS, stage=stage)
    new_w = traverse_util.flatten_dict(grown.variables['params'])
    widened = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(grown.opt_states[0])[0]:
        suffix = surgery.param_suffix(path)
        if suffix and suffix[0] == 'weights':
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(new_w[suffix]), err_msg=str(suffix))
            widened += int(np.shape(leaf) != np.shape(weights[suffix]))
    return widened


def test_widen_replicates_moments_like_weights(chain):
    """With every momentum trace set equal to its weights, widening must keep them equal: the
    moments are replicated (and split) exactly like the weights."""
    checked = assert_moments_widen_like_weights(chain[0]['spec'], chain[0]['v'], stage=1)
    assert checked > 10, checked  # widened leaves were among those compared


def test_branch_keeps_derived_genotype(chain):
    r = next(r for r in chain if r['kind'] == 'branch')
    spec, new = r['spec'], r['grown']
    a, b = r['v']['params']['arch'], new.variables['params']['arch']
    assert b['normal'].shape[-1] == a['normal'].shape[-1] + 1
    g0 = derive(a['normal'], a['reduce'], spec.steps, spec.multiplier, spec.primitives)
    g1 = derive(b['normal'], b['reduce'], new.spec.steps, new.spec.multiplier, new.spec.primitives)
    assert g0 == g1
    w = jax.nn.softmax(b['normal'], -1)[:, -1]
    assert float(w.max()) < 2e-7
    mu_old = next(x for p, x in _flat(r['opt'][1]).items() if "mu['arch']['normal']" in p)
    mu_new = next(x for p, x in _flat(new.opt_states[1]).items() if "mu['arch']['normal']" in p)
    np.testing.assert_array_equal(np.asarray(mu_new)[:, :-1], np.asarray(mu_old))  # Adam moments carried
    assert not np.any(np.asarray(mu_new)[:, -1])                                    # new column starts at zero


def test_grown_network_trains(chain):
    """One weight step of the fully grown network (drop-path and dropout on) has a finite loss."""
    final = chain[-1]['grown']
    state = TrainState(step=jnp.zeros((), jnp.int32), params=final.variables['params'],
                       batch_stats=final.variables['batch_stats'], weight_opt_state=final.opt_states[0],
                       arch_opt_state=final.opt_states[1])
    steps = make_search_steps(final.spec, SearchStepConfig(tau_steps=10), TXS[0], None)
    batch = {'image': jax.random.randint(jax.random.key(0), (8, SIZE, SIZE, 3), 0, 255).astype(jnp.uint8),
             'label': jnp.arange(8) % 10}
    state, m = steps.weight_step(state, batch, jax.random.key(1))
    assert np.isfinite(float(m['loss'])) and float(m['grad_norm']) > 0, m
    kinds = [json.loads(e)['kind'] for e in final.spec.growth_history]
    assert kinds == [k for k, _ in CHAIN]


def test_prune_reports_change_and_zeroes_momentum(chain):
    spec, v, opt = chain[0]['spec'], chain[0]['v'], chain[0]['opt']
    grown = growth.grow('prune', spec, v, opt, jax.random.key(0), txs=TXS, fraction=0.3)
    kernels = [x for p, x in traverse_util.flatten_dict(grown.variables['params']['weights']).items()
               if p[-1] == 'kernel']
    zero_frac = sum(int((np.asarray(k) == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert 0.29 <= zero_frac <= 0.31, zero_frac
    assert grown.event['zeroed'] > 0


def test_caps_and_bad_kinds_are_clear(chain):
    r = next(r for r in chain if r['kind'] == 'branch')
    spec, v, opt = r['grown'].spec, r['grown'].variables, r['grown'].opt_states
    with pytest.raises(ValueError, match='allowed'):
        growth.grow('deeper', spec, v, opt, jax.random.key(0), txs=TXS)
    with pytest.raises(growth.GrowthSkipped, match='already a candidate'):  # after the branch, every primitive is one
        growth.grow('branch', spec, v, opt, jax.random.key(0), txs=TXS)
    with pytest.raises(growth.GrowthSkipped, match='no stage 7'):
        growth.grow('depth', spec, v, opt, jax.random.key(0), txs=TXS, stage=7)
