"""Data parallel on two (forced host) CPU devices reproduces one device; alphas identical on every device.

XLA_FLAGS=--xla_force_host_platform_device_count must be set before jax starts, so the check runs in a
child process and the rest of the suite keeps its single device.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = r'''
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_compilation_cache_dir', os.environ['ASOSE_JAX_CACHE'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
from asose_jax.search import parallel
from asose_jax.search.optim import ArchOptConfig, WeightOptConfig, arch_transform, weight_transform
from asose_jax.search.steps import SearchStepConfig, make_search_steps
from asose_jax.search.train_state import create_train_state
from asose_jax.space.network import init_search_variables
from asose_jax.space.spec import NetworkSpec

assert jax.device_count() == 2, jax.devices()
spec = NetworkSpec.darts(C=4, layers=1, steps=1, multiplier=1,
                         primitives=('skip_connect', 'dil_conv_3x3', 'avg_pool_3x3'))
cfg = SearchStepConfig(sampling='gumbel', hard=True, single_path=False, tau_max=2.0, tau_min=1.0, tau_steps=10)
wtx, atx = weight_transform(WeightOptConfig(lr=0.1), 10), arch_transform(ArchOptConfig(lr=0.05))
rng = np.random.default_rng(0)
batches = [{'image': jnp.asarray(rng.integers(0, 256, (8, 8, 8, 3), np.uint8)),
            'label': jnp.asarray(rng.integers(0, 10, 8).astype(np.int32))} for _ in range(3)]
keys = jax.random.split(jax.random.key(1), 2)

init = init_search_variables(spec, jax.random.key(0), 8)

def fresh():  # a new copy each time: the steps donate the state
    return create_train_state(jax.tree_util.tree_map(jnp.copy, init), wtx, atx)

def run(steps, state):
    for i, b in enumerate(batches):
        state, _ = steps.weight_step(state, b, keys[0])
        if i % 2 == 1:
            state, _ = steps.arch_step(state, batches[0], keys[1])
    return state, steps.eval_step(state, batches[2])[1]

steps = make_search_steps(spec, cfg, wtx, atx)
one, ev_one = run(steps, fresh())
mesh = parallel.make_mesh()
psteps = parallel.parallelize_steps(steps, mesh)
two, ev_two = run(psteps, parallel.replicate(mesh, fresh()))

diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))) if a.size else 0.0,
                              jax.device_get(one), jax.device_get(two))
arch_shards = {t: [np.asarray(s.data) for s in two.params['arch'][t].addressable_shards] for t in ('normal', 'reduce')}
sharded = parallel.shard_batch(mesh, batches[0])['image']
try:
    parallel.shard_batch(mesh, {'image': batches[0]['image'][:3]})
    bad_batch_error = ''
except ValueError as e:
    bad_batch_error = str(e)
print('RESULT' + json.dumps({
    'max_diff': max(jax.tree_util.tree_leaves(diff)),
    'arch_moved': float(jnp.max(jnp.abs(one.params['arch']['reduce'] - fresh().params['arch']['reduce']))),
    'arch_devices': {t: len(s) for t, s in arch_shards.items()},
    'arch_identical': all(all(np.array_equal(s[0], x) for x in s) for s in arch_shards.values()),
    'arch_replicated': all(two.params['arch'][t].sharding.is_fully_replicated for t in ('normal', 'reduce')),
    'batch_shard_rows': [int(s.data.shape[0]) for s in sharded.addressable_shards],
    'eval_diff': abs(float(ev_one['loss']) - float(ev_two['loss'])),
    'step': [int(one.step), int(two.step)],
    'bad_batch_error': bad_batch_error,
}))
'''


@pytest.fixture(scope='module')
def result():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
               PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''),
               ASOSE_JAX_CACHE=os.environ.get('ASOSE_JAX_CACHE', os.path.join(root, '.cache', 'xla')))
    proc = subprocess.run([sys.executable, '-c', CHILD], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT')][-1]
    return json.loads(line[len('RESULT'):])


def test_two_devices_match_one_device(result):
    assert result['step'] == [3, 3]
    assert result['arch_moved'] > 1e-4  # the arch steps did something
    assert result['max_diff'] < 1e-4, result
    assert result['eval_diff'] < 1e-4, result


def test_batch_is_split_and_alphas_identical_on_every_device(result):
    assert result['batch_shard_rows'] == [4, 4]
    assert result['arch_devices'] == {'normal': 2, 'reduce': 2}
    assert result['arch_replicated']
    assert result['arch_identical']


def test_indivisible_batch_is_a_clear_error(result):
    assert 'not divisible by the 2 devices' in result['bad_batch_error']
