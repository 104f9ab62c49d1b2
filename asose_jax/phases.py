"""Phase drivers: warmup -> search (with growth between epochs) -> optimize.

Each driver runs epochs of jitted steps, evaluates, and writes one metrics line per epoch.
Steps are built once per phase (and once per spec), so each compiles once.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from asose_jax import config as config_lib
from asose_jax import growth, growth_policy, monitor, parallel
from asose_jax.data import DeviceSplit
from asose_jax.genotype import Genotype, derive
from asose_jax.optim import arch_transform, weight_transform
from asose_jax.spec import NetworkSpec
from asose_jax.steps import Steps, make_search_steps
from asose_jax.train_state import TrainState

STREAMS = ('data_weights', 'data_arch', 'data_optimize', 'weight', 'arch', 'optimize', 'init', 'optimize_init')


def key_streams(seed: int) -> dict:
    """One root key split once into named streams; steps fold in their step counter."""
    keys = jax.random.split(jax.random.key(seed), len(STREAMS))
    return dict(zip(STREAMS, keys))


@dataclasses.dataclass
class RunContext:
    config: ml_collections.ConfigDict
    workdir: str
    weights_split: DeviceSplit   # trains the weights during warmup/search
    arch_split: DeviceSplit      # trains the arch logits
    train_split: DeviceSplit     # both halves, for the optimize phase
    eval_split: DeviceSplit
    keys: dict
    writer: monitor.MetricsWriter

    @property
    def progress(self) -> bool:
        return bool(self.config.progress) and sys.stderr.isatty()


def genotype_of(spec: NetworkSpec, params: dict) -> Genotype:
    arch = jax.device_get(params['arch'])
    return derive(arch['normal'], arch['reduce'], spec.steps, spec.multiplier, spec.primitives)


def evaluate(steps: Steps, state: TrainState, split: DeviceSplit, batch_size: int) -> dict:
    total, loss, acc = 0.0, 0.0, 0.0
    for batch in split.eval_batches(batch_size):
        _, m = steps.eval_step(state, batch)
        m = jax.device_get({k: m[k] for k in ('loss', 'acc', 'count')})
        total += float(m['count'])
        loss += float(m['loss']) * float(m['count'])
        acc += float(m['acc']) * float(m['count'])
    return {'val_loss': loss / max(total, 1.0), 'val_acc': acc / max(total, 1.0)}


def _cycle(split: DeviceSplit, key, batch_size: int) -> Iterator[dict]:
    """Endless batches of the arch half, reshuffled on every pass."""
    epoch = 0
    while True:
        yield from split.epoch_batches(jax.random.fold_in(key, epoch), batch_size)
        epoch += 1


def _run_epoch(ctx: RunContext, steps: Steps, state: TrainState, batches, n_batches: int, desc: str,
               step_key, after_step: Callable | None = None):
    """Runs weight steps over `batches`; returns (state, mean train metrics, images/s, first-step s)."""
    sums: dict = {}
    t_first = t0 = time.time()
    first_step_s, images = 0.0, 0
    for i, batch in enumerate(tqdm(batches, total=n_batches, desc=desc, disable=not ctx.progress, leave=False)):
        state, m = steps.weight_step(state, batch, step_key)
        if after_step is not None:
            state, extra = after_step(state, i)
            m = {**m, **extra}
        for k, v in m.items():
            sums.setdefault(k, []).append(v)
        if i == 0:
            jax.block_until_ready(state.step)
            first_step_s = time.time() - t_first
            t0 = time.time()
        else:
            images += batch['label'].shape[0]
    jax.block_until_ready(state.step)
    elapsed = time.time() - t0
    means = {k: float(np.mean(jax.device_get(jnp.stack(v)))) for k, v in sums.items()}
    return state, means, (images / elapsed if elapsed > 0 and images else float('nan')), first_step_s


def _check_finite(phase: str, epoch: int, metrics: dict) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)}
    if bad:
        raise FloatingPointError(f'{phase} epoch {epoch}: non-finite metrics {bad}; stopping '
                                 '(no silent continuation). Lower the learning rate or check the data.')


def search_txs(c: ml_collections.ConfigDict, n_batches: int) -> tuple:
    """The (weight, arch) transforms of warmup and search: one cosine over both phases' steps."""
    total_steps = (c.search.warmup_epochs + c.search.search_epochs) * n_batches
    return (weight_transform(config_lib.weight_opt_config(c), total_steps),
            arch_transform(config_lib.arch_opt_config(c)))


def _search_steps(ctx: RunContext, phase: str, spec: NetworkSpec) -> Steps:
    c = ctx.config
    n_batches = ctx.weights_split.num_batches(c.search.batch_size)
    weight_tx, arch_tx = search_txs(c, n_batches)
    tau_steps = max(c.search.search_epochs * n_batches, 1)
    return make_search_steps(spec, config_lib.search_step_config(c, phase, tau_steps), weight_tx,
                             arch_tx if phase == 'search' else None)


def _epoch_record(ctx: RunContext, phase: str, epoch: int, spec: NetworkSpec, steps: Steps, state: TrainState,
                  train_m: dict, ips: float, first_s: float) -> tuple[dict, Genotype]:
    c = ctx.config
    record = {'phase': phase, 'epoch': epoch, 'step': int(state.step), 'images_per_sec': ips,
              'first_step_s': first_s, 'cells': spec.layers, **train_m,
              **evaluate(steps, state, ctx.eval_split, c.data.eval_batch_size)}
    g = genotype_of(spec, state.params)
    arch = jax.device_get(state.params['arch'])
    record.update({f'entropy_{t}': monitor.arch_entropy(a) for t, a in arch.items()})
    record['arch_entropy'] = float(np.mean([record[f'entropy_{t}'] for t in arch]))
    record.update(monitor.genotype_stats(g))
    record['genotype'] = str(g)
    return record, g


def search_phase(ctx: RunContext, phase: str, spec: NetworkSpec, state: TrainState, epochs: int,
                 first_epoch: int = 0) -> tuple[NetworkSpec, TrainState]:
    """warmup: weight steps on uniform edge weights. search: weight steps on the weight half, an
    arch step on the arch half every `arch_every` weight steps; genotype saved every epoch; growth
    (growth.py) between search epochs when the config asks for it. Returns the (grown) spec and state."""
    c = ctx.config
    bs = c.search.batch_size
    n_batches = ctx.weights_split.num_batches(bs)
    steps = _search_steps(ctx, phase, spec)
    steps, state = parallel.maybe_parallel(c, steps, state)
    arch_batches = _cycle(ctx.arch_split, ctx.keys['data_arch'], bs) if phase == 'search' else None
    grower = Grower(ctx, phase) if phase == 'search' else None

    def arch_after(st, i):
        if (i + 1) % c.search.arch_every:
            return st, {}
        return steps.arch_step(st, next(arch_batches), ctx.keys['arch'])

    for epoch in range(first_epoch, epochs):
        data_key = jax.random.fold_in(ctx.keys['data_weights'], int(state.step))
        state, train_m, ips, first_s = _run_epoch(
            ctx, steps, state, ctx.weights_split.epoch_batches(data_key, bs), n_batches,
            f'{phase} {epoch + 1}/{epochs}', ctx.keys['weight'], arch_after if arch_batches else None)
        record, g = _epoch_record(ctx, phase, epoch, spec, steps, state, train_m, ips, first_s)
        _check_finite(phase, epoch, record)
        ctx.writer.write(record)
        monitor.save_genotype(os.path.join(ctx.workdir, 'genotypes', f'{phase}_epoch{epoch:03d}.json'), g,
                              epoch=epoch, val_acc=record['val_acc'])
        print(f"[{phase} {epoch + 1}/{epochs}] loss {record['loss']:.3f} acc {record['acc']:.3f} "
              f"val_acc {record['val_acc']:.3f} tau {record['tau']:.2f} {ips:.1f} img/s", flush=True)
        if grower is not None and epoch < epochs - 1:
            spec, state, steps = grower.after_epoch(epoch, record, spec, state, steps)
    return spec, state


@dataclasses.dataclass
class _Snapshot:
    """The pre-growth network, kept in memory until the growth proves itself (or is rolled back)."""

    spec: NetworkSpec
    state: TrainState
    steps: Steps
    val_acc: float
    epoch: int
    event: dict


class Grower:
    """Grows the search network between search epochs (growth.trigger), within the caps; rolls a
    growth back when, `rollback_patience` epochs later, val_acc is worse than before it by more
    than `rollback_margin`. Every decision is written to metrics.jsonl as an event line."""

    def __init__(self, ctx: RunContext, phase: str):
        self.ctx, self.phase, self.cfg = ctx, phase, ctx.config.growth
        self.val_accs: list[float] = []   # since the last growth
        self.history: list[dict] = []
        self.done: list[str] = []
        self.snapshot: _Snapshot | None = None
        self.check_batch = next(iter(ctx.eval_split.eval_batches(ctx.config.data.eval_batch_size)))

    def _event(self, event: str, epoch: int, state: TrainState, **fields) -> None:
        record = {'event': event, 'phase': self.phase, 'epoch': epoch, 'step': int(state.step), **fields}
        self.ctx.writer.write(record)
        print(f'[{self.phase} {epoch + 1}] {event}: ' + ', '.join(f'{k}={v}' for k, v in fields.items()), flush=True)

    def after_epoch(self, epoch: int, record: dict, spec: NetworkSpec, state: TrainState, steps: Steps):
        self.val_accs.append(record['val_acc'])
        self.history.append(record)
        if self.snapshot is not None and epoch - self.snapshot.epoch >= self.cfg.rollback_patience:
            snap, self.snapshot = self.snapshot, None
            if record['val_acc'] < snap.val_acc - self.cfg.rollback_margin:
                self._event('growth_rollback', epoch, state, kind=snap.event['kind'],
                            reason=f"val_acc {record['val_acc']:.4f} < {snap.val_acc:.4f} - margin "
                                   f'{self.cfg.rollback_margin} after {epoch - snap.epoch} epochs')
                self.val_accs = [snap.val_acc]
                return snap.spec, snap.state, snap.steps
        kind = growth_policy.decide(self.cfg, epoch, self.val_accs, len(self.done))
        if kind is None:
            return spec, state, steps
        for candidate in growth_policy.candidates(kind, spec, self.history, self.done):
            grown = self._try(candidate, epoch, spec, state, steps)
            if grown is not None:
                return grown
        return spec, state, steps

    def _try(self, kind: str, epoch: int, spec: NetworkSpec, state: TrainState, steps: Steps):
        c = self.ctx.config
        snapshot_state = jax.tree_util.tree_map(jnp.copy, state)
        variables = {'params': state.params, 'batch_stats': state.batch_stats}
        try:
            grown = growth.grow(kind, spec, variables, (state.weight_opt_state, state.arch_opt_state),
                                jax.random.fold_in(self.ctx.keys['init'], int(state.step)),
                                txs=search_txs(c, self.ctx.weights_split.num_batches(c.search.batch_size)), **growth_policy.options(kind, self.cfg))
        except growth.GrowthSkipped as e:
            self._event('growth_skipped', epoch, state, kind=kind, reason=str(e))
            return None
        reason = growth_policy.cap_violation(grown.spec, grown.event['params_after'], self.cfg)
        if reason is not None:
            self._event('growth_skipped', epoch, state, kind=kind, reason=reason)
            return None
        new_state = state.replace(params=grown.variables['params'], batch_stats=grown.variables['batch_stats'],
                                  weight_opt_state=grown.opt_states[0], arch_opt_state=grown.opt_states[1])
        _, before = steps.eval_step(snapshot_state, self.check_batch)
        new_steps = _search_steps(self.ctx, self.phase, grown.spec)
        sample = next(iter(self.ctx.weights_split.epoch_batches(self.ctx.keys['data_weights'], c.search.batch_size)))
        compile_s = None  # sharded steps compile at their first call (in that epoch's first_step_s)
        if c.parallel.data_parallel:
            new_steps, new_state = parallel.maybe_parallel(c, new_steps, new_state)
        else:  # compile the new weight step now, to log its compile time with the growth
            t0 = time.time()
            compiled = new_steps.weight_step.lower(new_state, sample, self.ctx.keys['weight']).compile()
            compile_s = round(time.time() - t0, 2)
            new_steps = dataclasses.replace(new_steps, weight_step=compiled)
        _, after = new_steps.eval_step(new_state, self.check_batch)
        change = float(jnp.max(jnp.abs(before['logits'] - after['logits'])))
        fields = {**grown.event, 'max_logit_change': change, 'compile_s': compile_s,
                  'cells': grown.spec.layers, 'spec': grown.spec.to_dict()['cells']}
        if kind == 'prune':
            fields.update(loss_before=float(before['loss']), loss_after=float(after['loss']),
                          acc_before=float(before['acc']), acc_after=float(after['acc']))
        self._event('growth', epoch, state, **fields)
        self.snapshot = _Snapshot(spec, snapshot_state, steps, self.val_accs[-1], epoch, grown.event)
        self.done.append(kind)
        self.val_accs = [self.val_accs[-1]]
        return grown.spec, new_state, new_steps


def optimize_phase(ctx: RunContext, genotype: Genotype, spec: NetworkSpec) -> tuple[TrainState, dict]:
    """Trains a freshly initialised FixedNetwork(genotype) on the whole training set.

    The loop is `evaluate.train_fixed`, shared with the evaluation CLI; imported here because
    evaluate builds on this module (RunContext, the epoch loop).
    """
    from asose_jax import evaluate as evaluate_lib
    cfg = evaluate_lib.FixedTrainConfig.from_config(ctx.config, spec.num_classes, spec)
    _, state, record = evaluate_lib.train_fixed(ctx, genotype, cfg, phase='optimize')
    return state, record
