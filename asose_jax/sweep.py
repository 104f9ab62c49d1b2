"""N searches in one compiled program: `vmap` over train states, PRNG streams and the arch learning rate.

    python -m asose_jax.sweep --config configs/cifar10.py:smoke --config.sweep.seeds=4 \
        --config.sweep.arch_lrs=3e-3,1e-3 --workdir runs/sweep

Runs the fixed-structure phases (warmup + search) of `len(arch_lrs) * seeds` members, seeds
`config.seed + i`, and writes `sweep_summary.json`: each member's genotype and validation accuracy,
and how many members agree with the most common genotype. Every step is traced and compiled once
for all members (the cost of one program, not N).

Under `vmap` a `lax.switch` turns into a select that evaluates every branch, so the sweep always
runs the mixture path (`single_path=False`: the hard straight-through or soft weights multiply
every op); the single-path speed-up does not carry over (see bench/bench_sweep.py).
The arch learning rate is a vmapped hyper-parameter: the Adam of `optim.arch_transform` wrapped in
`optax.inject_hyperparams`, so the rate lives in each member's optimizer state.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from asose_jax.data.cifar import DeviceSplit
from asose_jax.run import context
from asose_jax.run import config as config_lib
from asose_jax.search.compilation import enable_compilation_cache
from asose_jax.search.optim import ArchOptConfig, labels, weight_transform
from asose_jax.search.steps import SearchStepConfig, make_search_steps
from asose_jax.search.train_state import TrainState
from asose_jax.space.genotype import derive_arch
from asose_jax.space.network import init_search_variables
from asose_jax.space.spec import NetworkSpec


def arch_lrs(c: ml_collections.ConfigDict) -> list[float]:
    """The arch learning rates of the sweep: `sweep.arch_lrs` ('3e-3,1e-3'), '' = arch_optim.lr."""
    text = str(c.sweep.arch_lrs).strip()
    if not text:
        return [float(c.arch_optim.lr)]
    try:
        lrs = [float(t) for t in text.strip('()[]').split(',') if t.strip()]
    except ValueError as e:
        raise config_lib.ConfigError(f'config.sweep.arch_lrs={text!r} is invalid; allowed: comma-separated '
                                     'positive numbers, e.g. 3e-3,1e-3') from e
    if not lrs or any(lr <= 0 for lr in lrs):
        raise config_lib.ConfigError(f'config.sweep.arch_lrs={text!r} is invalid; allowed: comma-separated '
                                     'positive numbers, e.g. 3e-3,1e-3')
    return lrs


def members(c: ml_collections.ConfigDict) -> list[tuple[int, float]]:
    """(seed, arch_lr) of every member: each lr with seeds config.seed .. config.seed + sweep.seeds - 1."""
    return [(c.seed + i, lr) for lr in arch_lrs(c) for i in range(c.sweep.seeds)]


def arch_transform_injected(cfg: ArchOptConfig, lr=None) -> optax.GradientTransformation:
    """`optim.arch_transform` with the Adam learning rate stored in the state (vmappable)."""
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=cfg.lr if lr is None else lr,
                                                b1=cfg.b1, b2=cfg.b2, eps=1e-8)
    chain = optax.chain(optax.add_decayed_weights(cfg.weight_decay), adam)
    return optax.multi_transform({'weights': optax.set_to_zero(), 'arch': chain}, labels)


def init_states(spec: NetworkSpec, init_keys, lrs, image_size: int, weight_tx, arch_cfg: ArchOptConfig,
                depthwise_impl: str = 'conv') -> TrainState:
    """A TrainState with a leading member axis: member i initialised from init_keys[i], arch lr lrs[i]."""

    def one(key, lr):
        v = init_search_variables(spec, key, image_size, depthwise_impl)
        params = v['params']
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=v['batch_stats'],
                          weight_opt_state=weight_tx.init(params),
                          arch_opt_state=arch_transform_injected(arch_cfg, lr).init(params))

    return jax.vmap(one)(init_keys, jnp.asarray(lrs, jnp.float32))


@dataclasses.dataclass(frozen=True)
class VmappedSteps:
    weight_step: object   # (states[N], batches[N], keys[N]) -> (states, metrics[N])
    arch_step: object
    eval_step: object     # (states[N], shared batch) -> metrics[N]


def vmapped_steps(spec: NetworkSpec, cfg: SearchStepConfig, weight_tx, arch_tx) -> VmappedSteps:
    """The search steps vmapped over members (forced onto the mixture path, see the module doc)."""
    steps = make_search_steps(spec, dataclasses.replace(cfg, single_path=False), weight_tx, arch_tx)
    return VmappedSteps(
        weight_step=jax.jit(jax.vmap(steps.weight_step.__wrapped__), donate_argnums=0),
        arch_step=jax.jit(jax.vmap(steps.arch_step.__wrapped__), donate_argnums=0) if arch_tx else None,
        eval_step=jax.jit(jax.vmap(steps.eval_jit.__wrapped__, in_axes=(0, None))))


def _orders(split: DeviceSplit, keys, batch_size: int):
    """[N, batches, batch_size] shuffled indices, one permutation per member key."""
    n = split.num_batches(batch_size)
    return jax.vmap(lambda k: jax.random.permutation(k, len(split))[: n * batch_size].reshape(n, batch_size))(keys)


def _batch(split: DeviceSplit, idx) -> dict:
    return {'image': split.images[idx], 'label': split.labels[idx]}


def _evaluate(ve, state, split: DeviceSplit, batch_size: int) -> dict:
    total, loss, acc = 0.0, 0.0, 0.0
    for batch in split.eval_batches(batch_size):
        m = jax.device_get(ve(state, batch))
        total = total + m['count']
        loss = loss + m['loss'] * m['count']
        acc = acc + m['acc'] * m['count']
    return {'val_loss': loss / np.maximum(total, 1.0), 'val_acc': acc / np.maximum(total, 1.0)}


def _arch_batches(split: DeviceSplit, keys, batch_size: int) -> Iterator[dict]:
    """Endless member-stacked arch batches; each member's pass p is ordered by fold_in(its key, p)."""
    for p in itertools.count():
        order = _orders(split, jax.vmap(jax.random.fold_in, (0, None))(keys, p), batch_size)
        for j in range(order.shape[1]):
            yield _batch(split, order[:, j])


def _sweep_epoch(vs: VmappedSteps, state, c: ml_collections.ConfigDict, splits: dict, keys: dict, arch_batches):
    """One epoch of every member's weight (and arch) steps; returns (state, last metrics, images in
    timed steps, timed s, first-step s). The first step compiles, so it is timed apart."""
    bs = c.search.batch_size
    order = _orders(splits['weights'], jax.vmap(jax.random.fold_in, (0, None))(keys['data_weights'],
                                                                              int(state.step[0])), bs)
    t0 = time.time()
    images, first_s = 0, 0.0
    for i in range(order.shape[1]):
        state, m = vs.weight_step(state, _batch(splits['weights'], order[:, i]), keys['weight'])
        if vs.arch_step is not None and (i + 1) % c.search.arch_every == 0:
            state, _ = vs.arch_step(state, next(arch_batches), keys['arch'])
        if i == 0:
            jax.block_until_ready(state.step)
            first_s, t0 = time.time() - t0, time.time()
        else:
            images += bs * order.shape[0]
    jax.block_until_ready(state.step)
    return state, m, images, time.time() - t0, first_s


def _member_keys(mem: list) -> dict:
    """Each stream of context.STREAMS stacked over the members' seeds."""
    streams = [context.key_streams(seed) for seed, _ in mem]
    return {name: jnp.stack([s[name] for s in streams]) for name in context.STREAMS}


def _summary(c: ml_collections.ConfigDict, mem: list, spec: NetworkSpec, state, ev: dict) -> dict:
    """Each member's derived genotype and accuracy, and how many agree (overall and per arch lr)."""
    arch = jax.device_get(state.params['arch'])
    genotypes = [str(derive_arch({t: a[i] for t, a in arch.items()}, spec.space, spec.steps, spec.multiplier,
                                 spec.primitives)) for i in range(len(mem))]
    common, agree = collections.Counter(genotypes).most_common(1)[0]
    return {
        'members': [{'seed': s, 'arch_lr': lr, 'genotype': g, 'val_acc': float(a), 'val_loss': float(l)}
                    for (s, lr), g, a, l in zip(mem, genotypes, ev['val_acc'], ev['val_loss'])],
        'num_members': len(mem), 'most_common_genotype': common, 'agree_with_most_common': agree,
        'agree_by_arch_lr': {str(lr): collections.Counter(g for (_, l), g in zip(mem, genotypes) if l == lr)
                             .most_common(1)[0][1] for lr in arch_lrs(c)},
    }


def run(c: ml_collections.ConfigDict, workdir: str, splits: dict | None = None) -> dict:
    """Warmup + search for every member at once; writes and returns the sweep summary. Growth changes
    shapes, which one vmapped program cannot: the sweep searches the fixed structure (growth off)."""
    if c.growth.trigger != 'none' or c.monitor.on_plateau == 'grow':
        print(f'sweep: growth ignored (growth.trigger={c.growth.trigger!r}, monitor.on_plateau='
              f'{c.monitor.on_plateau!r}): sweeps search a fixed structure', flush=True)
        c = c.copy_and_resolve_references()
        c.growth.trigger, c.growth.schedule, c.monitor.on_plateau = 'none', '', 'none'
    config_lib.validate(c)
    mem, splits = members(c), splits or context.load_splits(c)
    os.makedirs(workdir, exist_ok=True)
    t_start, spec, keys = time.time(), config_lib.network_spec(c), _member_keys(mem)
    n_batches = splits['weights'].num_batches(c.search.batch_size)
    total_steps = (c.search.warmup_epochs + c.search.search_epochs) * n_batches
    weight_tx = weight_transform(config_lib.weight_opt_config(c), total_steps)
    arch_cfg = config_lib.arch_opt_config(c)
    state = init_states(spec, keys['init'], [lr for _, lr in mem], splits['train'].images.shape[1], weight_tx,
                        arch_cfg, config_lib.execution_form(c)['depthwise_impl'])
    history, images, timed_s, first_s = [], 0, 0.0, {}
    arch_batches = _arch_batches(splits['arch'], keys['data_arch'], c.search.batch_size)
    vs = None
    for phase, epochs in (('warmup', c.search.warmup_epochs), ('search', c.search.search_epochs)):
        if epochs:
            vs = vmapped_steps(spec, config_lib.search_step_config(c, phase, n_batches), weight_tx,
                               arch_transform_injected(arch_cfg) if phase == 'search' else None)
        for epoch in range(epochs):
            state, m, n_images, s, first = _sweep_epoch(vs, state, c, splits, keys, arch_batches)
            images, timed_s = images + n_images, timed_s + s
            first_s.setdefault(phase, first)
            ev = _evaluate(vs.eval_step, state, splits['eval'], c.data.eval_batch_size)
            history.append({'phase': phase, 'epoch': epoch, 'loss': jax.device_get(m['loss']).tolist(),
                            'val_acc': ev['val_acc'].tolist()})
            print(f'[sweep {phase} {epoch + 1}/{epochs}] {len(mem)} members, val_acc '
                  + ' '.join(f'{a:.3f}' for a in ev['val_acc']), flush=True)
    vs = vs or vmapped_steps(spec, config_lib.search_step_config(c, 'search', n_batches), weight_tx, None)
    summary = {**_summary(c, mem, spec, state, _evaluate(vs.eval_step, state, splits['eval'], c.data.eval_batch_size)),
               'images_per_sec_total': images / timed_s if timed_s > 0 and images else float('nan'),
               'first_step_s': first_s, 'wall_s': time.time() - t_start, 'history': history,
               'path': 'mixture (single_path=False under vmap)'}
    with open(os.path.join(workdir, 'sweep_summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print(f"sweep done in {summary['wall_s']:.0f}s: {summary['agree_with_most_common']}/{len(mem)} members agree "
          f"on {summary['most_common_genotype']}", flush=True)
    return summary


def _define_flags() -> tuple:
    """--config and --workdir, defined only when run as a program (tests import this module next to
    asose_jax.train, which defines its own)."""
    return (config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cifar10.py:smoke.',
                                            lock_config=True),
            flags.DEFINE_string('workdir', None, 'Output folder (sweep_summary.json, per-member genotypes).'))


def main(config_flag, workdir_flag) -> None:
    config, workdir = config_flag.value, workdir_flag.value
    if config is None or not workdir:
        raise app.UsageError('--config and --workdir are required')
    enable_compilation_cache()
    with config_lib.exit_on_user_error():
        run(config, workdir)


if __name__ == '__main__':
    _flags = _define_flags()
    app.run(lambda argv: main(*_flags))
