"""vmap sweeps: one program for N searches; each member equals its own un-vmapped run."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax import sweep
from asose_jax.data.cifar import DeviceSplit, synthetic
from asose_jax.run import config as config_lib
from asose_jax.search.optim import arch_transform, weight_transform
from asose_jax.search.steps import make_search_steps
from asose_jax.search.train_state import TrainState
from configs import cifar10

LRS = (0.05, 0.005)


def tiny_config():
    c = cifar10.get_config('smoke')
    c.data.source, c.data.image_size = 'synthetic', 8
    c.data.synthetic_train, c.data.synthetic_test, c.data.eval_batch_size = 64, 32, 32
    c.model.C, c.model.layers, c.model.steps, c.model.multiplier = 4, 1, 1, 1
    c.model.primitives = ['skip_connect', 'dil_conv_3x3', 'avg_pool_3x3']
    c.search.batch_size, c.search.warmup_epochs, c.search.search_epochs, c.search.arch_every = 8, 0, 1, 2
    c.search.sampling, c.search.beta_reg, c.search.eval_mode = 'gumbel', 0.0, 'argmax'
    c.search.hard, c.search.single_path = True, True  # the sweep must switch single path off itself
    c.sweep.seeds, c.sweep.arch_lrs = 1, ','.join(map(str, LRS))
    return c


@pytest.fixture(scope='module')
def ran(tmp_path_factory):
    c = tiny_config()
    d = tmp_path_factory.mktemp('sweep')
    ds = synthetic(64, 32, 10, 0, 8)
    half = {'weights': slice(0, 32), 'arch': slice(32, 64)}
    splits = {k: DeviceSplit.from_numpy(ds.train_images[s], ds.train_labels[s]) for k, s in half.items()}
    splits['train'] = DeviceSplit.from_numpy(ds.train_images, ds.train_labels)
    splits['eval'] = DeviceSplit.from_numpy(ds.test_images, ds.test_labels)
    summary = sweep.run(c, str(d), splits)
    return c, d, summary, splits


def test_members_and_bad_lrs():
    c = tiny_config()
    c.sweep.seeds = 3
    assert sweep.members(c) == [(0, 0.05), (1, 0.05), (2, 0.05), (0, 0.005), (1, 0.005), (2, 0.005)]
    c.sweep.arch_lrs = '3e-3,abc'
    with pytest.raises(config_lib.ConfigError, match='sweep.arch_lrs'):
        sweep.members(c)
    c.sweep.arch_lrs = '-1'
    with pytest.raises(config_lib.ConfigError, match='sweep.arch_lrs'):
        sweep.members(c)


def test_summary_written(ran):
    _, d, summary, _ = ran
    with open(os.path.join(d, 'sweep_summary.json')) as f:
        on_disk = json.load(f)
    assert on_disk['num_members'] == 2
    assert [m['arch_lr'] for m in on_disk['members']] == list(LRS)
    assert 1 <= on_disk['agree_with_most_common'] <= 2
    assert on_disk['most_common_genotype'] in [m['genotype'] for m in on_disk['members']]
    assert all(0.0 <= m['val_acc'] <= 1.0 for m in on_disk['members'])
    assert np.isfinite(summary['images_per_sec_total'])


def test_each_member_equals_its_own_run(ran):
    """Member 0 of the vmapped steps == the plain steps with optim.arch_transform at its lr; member 1 differs."""
    c = ran[0]
    splits = ran[3]
    spec = config_lib.network_spec(c)
    n_batches = splits['weights'].num_batches(c.search.batch_size)
    wtx = weight_transform(config_lib.weight_opt_config(c), c.search.search_epochs * n_batches)
    acfg = config_lib.arch_opt_config(c)
    scfg = config_lib.search_step_config(c, 'search', n_batches)
    keys = jax.random.split(jax.random.key(3), 2)
    states = sweep.init_states(spec, jnp.stack([keys[0], keys[0]]), list(LRS), 8, wtx, acfg)
    vs = sweep.vmapped_steps(spec, scfg, wtx, sweep.arch_transform_injected(acfg))
    b = {'image': splits['weights'].images[:8], 'label': splits['weights'].labels[:8]}
    first = jax.tree_util.tree_map(lambda x: x[0], states)  # before the donating steps
    arch0 = np.asarray(first.params['arch']['reduce'])  # host copy: the plain step donates `first`
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), b)
    step_keys = jnp.stack([keys[1], keys[1]])
    v, _ = vs.weight_step(states, stacked, step_keys)
    v, _ = vs.arch_step(v, stacked, step_keys)

    atx = arch_transform(dataclasses.replace(acfg, lr=LRS[0]))
    plain = make_search_steps(spec, dataclasses.replace(scfg, single_path=False), wtx, atx)
    s = TrainState(step=first.step, params=first.params, batch_stats=first.batch_stats,
                   weight_opt_state=first.weight_opt_state, arch_opt_state=atx.init(first.params))
    s, _ = plain.weight_step(s, b, keys[1])
    s, _ = plain.arch_step(s, b, keys[1])
    member0 = jax.tree_util.tree_map(lambda x: x[0], v.params)
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), member0, s.params)
    assert max(jax.tree_util.tree_leaves(diff)) < 1e-5, diff
    moved = float(jnp.max(jnp.abs(s.params['arch']['reduce'] - arch0)))
    between = float(jnp.max(jnp.abs(v.params['arch']['reduce'][0] - v.params['arch']['reduce'][1])))
    assert moved > 1e-3 and between > 1e-3  # the lrs differ by 10x, so member 1 moved differently
