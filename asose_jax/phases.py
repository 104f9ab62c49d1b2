"""Phase drivers: warmup -> search (with growth between epochs) -> optimize.

Each driver runs epochs of jitted steps, evaluates, and writes one metrics line per epoch.
Steps are built once per phase (and once per spec), so each compiles once.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from asose_jax import config as config_lib
from asose_jax import growth, growth_policy, monitor, parallel, stability
from asose_jax.data import DeviceSplit
from asose_jax.genotype import Genotype
from asose_jax.network import init_search_variables
from asose_jax.optim import arch_transform, hparam_transforms, weight_schedule, weight_transform
from asose_jax.spec import NetworkSpec
from asose_jax.steps import Steps, make_search_steps
from asose_jax.train_state import TrainState, create_train_state, with_hparams

# Called after every weight step as cb(phase, state) -> state; empty in the product. Tests install
# fault injectors here (tests/fault_injection.py: SIGKILL, SIGTERM or NaN weights at a given step).
STEP_CALLBACKS: list[Callable[[str, TrainState], TrainState]] = []
STOP = {'signal': None}  # set by train.py's SIGTERM/SIGINT handler; checked between steps


class Interrupted(Exception):
    """A stop signal arrived: the current step finished and a checkpoint was saved."""


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
    ckpt: Any = None  # checkpoint.RunCheckpoints, or None (no checkpoints: the evaluation CLI, tests)

    @property
    def progress(self) -> bool:
        return bool(self.config.progress) and sys.stderr.isatty()


def evaluate(steps: Steps, state: TrainState, split: DeviceSplit, batch_size: int, progress: bool = False) -> dict:
    total, loss, acc = 0.0, 0.0, 0.0
    n = -(-len(split) // batch_size)
    for batch in tqdm(split.eval_batches(batch_size), total=n, desc='eval', disable=not progress, leave=False):
        _, m = steps.eval_step(state, batch)
        m = jax.device_get({k: m[k] for k in ('loss', 'acc', 'count')})
        total += float(m['count'])
        loss += float(m['loss']) * float(m['count'])
        acc += float(m['acc']) * float(m['count'])
    return {'val_loss': loss / max(total, 1.0), 'val_acc': acc / max(total, 1.0)}


def _cycle(split: DeviceSplit, key, batch_size: int, start: int = 0) -> Iterator[dict]:
    """Endless batches of the arch half, reshuffled on every pass; `start` batches already consumed
    (a resume repositions the stream: pass p's order is fold_in(key, p))."""
    n = split.num_batches(batch_size)
    epoch, skip = divmod(start, n)
    while True:
        yield from itertools.islice(split.epoch_batches(jax.random.fold_in(key, epoch), batch_size), skip, None)
        epoch, skip = epoch + 1, 0


def run_epoch(ctx: RunContext, steps: Steps, state: TrainState, batches, n_batches: int, desc: str,
              step_key, after_step: Callable | None = None, phase: str = '', skip: int = 0,
              partial: dict | None = None, warm_steps: int = 1):
    """Runs weight steps over `batches` (the first `skip` already done, their metrics in `partial`);
    returns (state, mean train metrics, images/s, first-step s, batches done). The first `warm_steps`
    steps (those that compile: the first weight step, and the first arch step in `after_step`) count
    as first-step time, not throughput. Stops early, after the current step, when a stop signal
    arrived (batches done < n_batches)."""
    sums: dict = {k: [jnp.float32(x) for x in v] for k, v in (partial or {}).items()}
    t_first = t0 = time.time()
    first_step_s, images, done = 0.0, 0, skip
    batches = itertools.islice(batches, skip, None)
    for i, batch in enumerate(tqdm(batches, total=n_batches - skip, desc=desc, disable=not ctx.progress,
                                   leave=False), start=skip):
        state, m = steps.weight_step(state, batch, step_key)
        for callback in STEP_CALLBACKS:
            state = callback(phase, state)
        if after_step is not None:
            state, extra = after_step(state, i)
            m = {**m, **extra}
        for k, v in m.items():
            sums.setdefault(k, []).append(v)
        done = i + 1
        if i < skip + warm_steps:
            jax.block_until_ready(state.step)
            first_step_s = time.time() - t_first
            t0 = time.time()
        else:
            images += batch['label'].shape[0]
        if STOP['signal'] is not None and done < n_batches:
            break
    jax.block_until_ready(state.step)
    elapsed = time.time() - t0
    if done < n_batches:  # interrupted: the raw per-step metrics go into the checkpoint
        return state, {k: [float(x) for x in jax.device_get(v)] for k, v in sums.items()}, 0.0, 0.0, done
    means = {k: float(np.mean(jax.device_get(jnp.stack(v)))) for k, v in sums.items()}
    return state, means, (images / elapsed if elapsed > 0 and images else float('nan')), first_step_s, done


TIMING_FIELDS = ('images_per_sec', 'first_step_s')  # NaN when an epoch had no timed steps (e.g. resumed at its end)


def _non_finite(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items()
            if isinstance(v, float) and not np.isfinite(v) and k not in TIMING_FIELDS}


def stop_message(workdir: str) -> str:
    return (f'stopped by signal {STOP["signal"]} after the current step; a checkpoint was saved in '
            f'{workdir}/checkpoints. Resume with the same command (same --config and --workdir).')


class NanGuard:
    """Non-finite loss/metrics at an epoch end: restore the state from that epoch's start, halve the
    weight learning rate and retry, at most `checkpoint.nan_retries` times per phase; then stop with
    an error naming the phase and the step range. Never continues silently."""

    def __init__(self, ctx: RunContext, phase: str):
        self.ctx, self.phase = ctx, phase
        self.retries = int(ctx.config.checkpoint.nan_retries) if 'checkpoint' in ctx.config else 0
        self.used = 0
        self.good, self.first = None, 0

    def remember(self, state: TrainState) -> None:
        self.first = int(state.step) + 1
        if self.retries:
            self.good = jax.device_get(state)

    def check(self, epoch: int, record: dict, knobs: dict) -> TrainState | None:
        """None when the record is finite; else the state to retry the epoch from (lr halved in knobs)."""
        bad = _non_finite(record)
        if not bad:
            return None
        last = record.get('step')
        first = self.first
        where = f'{self.phase} epoch {epoch}, steps {first}..{last}'
        if self.used >= self.retries:
            raise FloatingPointError(f'{where}: non-finite metrics {bad}; stopping after {self.used} '
                                     f'rollback(s) with the weight learning rate halved each time (no silent '
                                     'continuation). Lower the learning rate or check the data.')
        self.used += 1
        knobs['lr_scale'] = knobs.get('lr_scale', 1.0) * 0.5
        self.ctx.writer.event('nan_rollback', phase=self.phase, epoch=epoch, steps=[first, last],
                              metrics=sorted(bad), lr_scale=knobs['lr_scale'], retry=self.used)
        print(f'[{self.phase} {epoch + 1}] WARNING non-finite {sorted(bad)} in steps {first}..{last}: '
              f'restored the state from the epoch start, weight lr x{knobs["lr_scale"]}, '
              f'retry {self.used}/{self.retries}', flush=True)
        return jax.device_put(self.good)


def set_hparams(state: TrainState, knobs: dict, arch_weight_decay: float) -> TrainState:
    """The state's runtime hyper-parameters from the phase's knobs (what the monitor and the NaN guard
    change, and what a checkpoint's meta records): new values, same program."""
    wd = knobs.get('arch_weight_decay', arch_weight_decay)
    return with_hparams(state, lr_scale=knobs.get('lr_scale', 1.0), arch_lr_scale=knobs.get('arch_lr_scale', 1.0),
                        arch_wd_scale=wd / arch_weight_decay if arch_weight_decay else 1.0,
                        tau_scale=knobs.get('tau_scale', 1.0))


def search_txs(c: ml_collections.ConfigDict, n_batches: int) -> tuple:
    """The (weight, arch) transforms of warmup and search: one cosine over both phases' steps."""
    total_steps = (c.search.warmup_epochs + c.search.search_epochs) * n_batches
    return (weight_transform(config_lib.weight_opt_config(c), total_steps),
            arch_transform(config_lib.arch_opt_config(c)))


def search_phase(ctx: RunContext, phase: str, spec: NetworkSpec, state: TrainState, epochs: int,
                 first_epoch: int = 0, resume: dict | None = None) -> tuple[NetworkSpec, TrainState]:
    """warmup: weight steps on uniform edge weights. search: weight steps on the weight half, an
    arch step on the arch half every `arch_every` weight steps; genotype saved every epoch.
    Returns the (possibly grown) spec and the state.

    After each epoch the stability monitor (stability.assess) and the collapse guard run; every
    action is logged (`"event": "monitor_action"` + print); in warmup only divergence acts, and
    the collapse guard only warns in search. 'lower_arch_lr' and 'raise_tau' scale the state's
    hparams (no recompile), 'stop' ends the phase, the collapse remedy 'raise_arch_wd' raises the
    arch weight decay once. In search, the Grower then grows the network (growth.trigger,
    or a monitor 'grow' on plateau) or rolls a recent growth back (rollback_patience, or a
    monitor 'rollback' on divergence).

    With ctx.ckpt, a checkpoint is saved at every epoch end (and when a stop signal arrives);
    `resume` (a checkpoint's meta of this phase) restarts at its epoch and batch with its knobs and
    grower state. Non-finite metrics roll the epoch back (NanGuard).
    """
    c = ctx.config
    mcfg = stability.MonitorConfig.from_config(c.monitor)
    bs = c.search.batch_size
    n_batches = ctx.weights_split.num_batches(bs)
    wcfg = config_lib.weight_opt_config(c)
    acfg = config_lib.arch_opt_config(c)
    total_steps = (c.search.warmup_epochs + c.search.search_epochs) * n_batches
    step_cfg = config_lib.search_step_config(c, phase, n_batches)
    knobs = {'arch_lr_scale': 1.0, 'tau_scale': 1.0, 'arch_weight_decay': acfg.weight_decay, 'lr_scale': 1.0}
    resume = resume or {}
    knobs.update(resume.get('knobs', {}))
    first_epoch = resume.get('epoch', first_epoch)
    skip = resume.get('batch', 0)

    weight_tx, arch_tx = hparam_transforms(wcfg, acfg, total_steps)

    def build_steps(spec: NetworkSpec) -> Steps:
        """Steps for a spec; the knobs are the state's hparams (set_hparams), so only a new spec compiles."""
        return make_search_steps(spec, step_cfg, weight_tx, arch_tx if phase == 'search' else None)

    steps, state = parallel.maybe_parallel(c, build_steps(spec), set_hparams(state, knobs, acfg.weight_decay))
    per_epoch = n_batches // c.search.arch_every  # arch batches drawn per epoch
    arch_batches = (_cycle(ctx.arch_split, ctx.keys['data_arch'], bs,
                           first_epoch * per_epoch + skip // c.search.arch_every) if phase == 'search' else None)
    grower = Grower(ctx, phase, build_steps) if phase == 'search' else None
    if grower is not None and resume.get('grower'):
        grower.load(resume['grower'], lambda m: abstract_search_state(ctx, NetworkSpec.from_dict(m['spec'])))
    nan_guard = NanGuard(ctx, phase)

    def save(next_epoch: int, batch: int = 0, val_acc=None, partial=None) -> None:
        if ctx.ckpt is not None:
            ctx.ckpt.save(state, {'phase': phase, 'epoch': next_epoch, 'batch': batch, 'spec': spec.to_dict(),
                                  'knobs': knobs, 'grower': grower.to_meta() if grower else None,
                                  'partial': partial, 'metrics_lines': len(ctx.writer.read()),
                                  'config': json.loads(c.to_json_best_effort())}, val_acc)

    def arch_after(st, i):
        if (i + 1) % c.search.arch_every:
            return st, {}
        return steps.arch_step(st, next(arch_batches), ctx.keys['arch'])

    def log_action(epoch: int, action: stability.Action, applied: bool, **fields) -> None:
        ctx.writer.event(stability.ACTION_EVENT, phase=phase, epoch=epoch, action=action.kind,
                         condition=action.condition, reason=action.reason, applied=applied, **fields)
        print(f'[monitor] {action.kind} ({"applied" if applied else "not applied"}): {action.reason}', flush=True)

    epoch = first_epoch
    while epoch < epochs:
        nan_guard.remember(state)
        data_key = jax.random.fold_in(ctx.keys['data_weights'], int(state.step) - skip)  # the epoch start's step
        state, train_m, ips, first_s, done = run_epoch(
            ctx, steps, state, ctx.weights_split.epoch_batches(data_key, bs), n_batches,
            f'{phase} {epoch + 1}/{epochs}', ctx.keys['weight'], arch_after if arch_batches else None,
            phase=phase, skip=skip, partial=resume.get('partial') if skip else None,
            warm_steps=c.search.arch_every if arch_batches else 1)
        if done < n_batches:  # a stop signal: save the position inside the epoch and leave
            save(epoch, done, partial=train_m)
            raise Interrupted(stop_message(ctx.workdir))
        skip = 0
        lr_at = weight_schedule(dataclasses.replace(wcfg, lr=wcfg.lr * knobs['lr_scale'],
                                                    lr_min=wcfg.lr_min * knobs['lr_scale']), total_steps)
        record = {'phase': phase, 'epoch': epoch, 'step': int(state.step), 'images_per_sec': ips,
                  'first_step_s': first_s, 'cells': spec.layers, 'lr': float(lr_at(int(state.step))), **train_m,
                  **evaluate(steps, state, ctx.eval_split, c.data.eval_batch_size, ctx.progress)}
        if phase == 'search':
            record.update(arch_lr=knobs['arch_lr_scale'] * acfg.lr, arch_weight_decay=knobs['arch_weight_decay'])
        retry = nan_guard.check(epoch, record, knobs)
        if retry is not None:  # the arch stream is repositioned to the epoch start too
            arch_batches = (_cycle(ctx.arch_split, ctx.keys['data_arch'], bs, epoch * per_epoch)
                            if phase == 'search' else None)
            state = parallel.maybe_replicate(c, set_hparams(retry, knobs, acfg.weight_decay))
            continue
        arch = jax.device_get(state.params['arch'])
        guard = stability.guarded_genotype(arch, mcfg, spec.steps, spec.multiplier, spec.primitives, spec.space)
        g = guard.genotype
        record.update({f'entropy_{t}': monitor.arch_entropy(a) for t, a in arch.items()})
        record['arch_entropy'] = float(np.mean([record[f'entropy_{t}'] for t in arch]))
        record.update(monitor.op_weights(arch, spec.primitives))
        record.update(monitor.genotype_stats(g))
        record['genotype'] = str(g)
        record['collapse'] = guard.condition is not None
        assessment = stability.assess(ctx.writer.read() + [record], mcfg)
        record['health'] = assessment.health
        record['conditions'] = [cond.kind for cond in assessment.conditions]
        ctx.writer.write(record)
        monitor.save_genotype(os.path.join(ctx.workdir, 'genotypes', f'{phase}_epoch{epoch:03d}.json'), g,
                              alphas=arch, primitives=spec.primitives, epoch=epoch, val_acc=record['val_acc'],
                              raw_genotype=str(guard.raw), capped=guard.capped)
        rescale, stop, requests = False, False, []
        if guard.condition is not None and phase == 'search':  # warmup logits are untrained
            remedy = mcfg.collapse_remedy
            applied = remedy == 'cap_skip' or (remedy == 'raise_arch_wd'
                                               and knobs['arch_weight_decay'] == acfg.weight_decay)
            if remedy == 'raise_arch_wd' and applied:  # once per phase
                knobs['arch_weight_decay'] = acfg.weight_decay * mcfg.arch_wd_factor
                rescale = True
            ctx.writer.event('collapse_warning', phase=phase, epoch=epoch, reason=guard.condition.reason,
                             remedy=remedy, applied=applied, raw_genotype=str(guard.raw), genotype=str(g),
                             arch_weight_decay=knobs['arch_weight_decay'])
            print(f'[monitor] WARNING collapse to parameter-free ops: {guard.condition.reason}; remedy {remedy}'
                  f'{" (applied)" if applied else ""}', flush=True)
        # warmup trains no arch logits and grows nothing: only divergence acts there
        for action in [a for a in assessment.actions if phase == 'search' or a.condition == 'divergence']:
            if action.kind == 'lower_arch_lr':
                knobs['arch_lr_scale'] *= action.factor
                rescale = True
                log_action(epoch, action, True, arch_lr=knobs['arch_lr_scale'] * acfg.lr)
            elif action.kind == 'raise_tau':
                knobs['tau_scale'] *= action.factor
                rescale = True
                log_action(epoch, action, True, tau_scale=knobs['tau_scale'])
            elif action.kind == 'stop':
                stop = True
                log_action(epoch, action, True)
            else:  # 'grow' / 'rollback': the Grower's (search only)
                requests.append(action.kind)
                log_action(epoch, action, grower is not None and epoch < epochs - 1, handled_by='growth')
        print(f"[{phase} {epoch + 1}/{epochs}] loss {record['loss']:.3f} acc {record['acc']:.3f} "
              f"val_acc {record['val_acc']:.3f} tau {record['tau']:.2f} {ips:.1f} img/s "
              f"health {record['health']:.2f}", flush=True)
        if rescale and not stop:  # new hyper-parameter values in the state: nothing recompiles
            state = set_hparams(state, knobs, acfg.weight_decay)
        if grower is not None and epoch < epochs - 1 and not stop:
            spec, state, steps = grower.after_epoch(epoch, record, spec, state, steps, requests)
            state = set_hparams(state, knobs, acfg.weight_decay)  # a rolled-back snapshot holds older ones
        epoch += 1
        save(epochs if stop else epoch, val_acc=record['val_acc'])
        if stop:
            break
    return spec, state


def abstract_search_state(ctx: RunContext, spec: NetworkSpec):
    """Shapes and dtypes of a search TrainState for `spec` (no computation): a restore's target."""
    c = ctx.config
    txs = search_txs(c, ctx.weights_split.num_batches(c.search.batch_size))
    size = int(ctx.train_split.images.shape[1])
    return jax.eval_shape(lambda k: create_train_state(init_search_variables(spec, k, size, config_lib.execution_form(c)['depthwise_impl']),
                                                       *txs), ctx.keys['init'])


@dataclasses.dataclass
class _Snapshot:
    """The pre-growth network, kept in memory until the growth proves itself (or is rolled back)."""

    spec: NetworkSpec
    state: TrainState
    steps: Steps
    val_acc: float
    epoch: int
    event: dict
    ckpt: int | None = None  # its number in checkpoints_pre_growth/


class Grower:
    """Grows the search network between search epochs (growth.trigger, or a monitor 'grow'
    request), within the caps; rolls a growth back when, `rollback_patience` epochs later, val_acc
    is worse than before it by more than `rollback_margin`, or when the monitor asks for a rollback
    while a pre-growth snapshot is held. Every decision is an event line in metrics.jsonl."""

    def __init__(self, ctx: RunContext, phase: str, build_steps: Callable[[NetworkSpec], Steps]):
        self.ctx, self.phase, self.cfg, self.build_steps = ctx, phase, ctx.config.growth, build_steps
        self.val_accs: list[float] = []   # since the last growth
        self.history: list[dict] = []
        self.done: list[str] = []
        self.snapshot: _Snapshot | None = None
        self.check_batch = next(iter(ctx.eval_split.eval_batches(ctx.config.data.eval_batch_size)))

    def to_meta(self) -> dict:
        """The grower's state as JSON (the snapshot by its pre-growth checkpoint number)."""
        snap = self.snapshot
        if snap is not None and snap.ckpt is None:
            raise RuntimeError('a pre-growth snapshot without a checkpoint cannot be saved')
        return monitor._plain({'val_accs': self.val_accs, 'history': self.history, 'done': self.done,
                               'snapshot': None if snap is None else {'ckpt': snap.ckpt, 'val_acc': snap.val_acc,
                                                                      'epoch': snap.epoch, 'event': snap.event}})

    def load(self, meta: dict, abstract_state: Callable) -> None:
        """Inverse of to_meta; the snapshot's network comes back from checkpoints_pre_growth/."""
        self.val_accs, self.history, self.done = list(meta['val_accs']), list(meta['history']), list(meta['done'])
        snap = meta['snapshot']
        if snap is not None:
            smeta, state = self.ctx.ckpt.restore_pre_growth(snap['ckpt'], abstract_state)
            spec = NetworkSpec.from_dict(smeta['spec'])
            self.snapshot = _Snapshot(spec, jax.device_put(state), self.build_steps(spec), snap['val_acc'],
                                      snap['epoch'], snap['event'], snap['ckpt'])

    def _event(self, event: str, epoch: int, state: TrainState, **fields) -> None:
        self.ctx.writer.event(event, phase=self.phase, epoch=epoch, step=int(state.step), **fields)
        print(f'[{self.phase} {epoch + 1}] {event}: ' + ', '.join(f'{k}={v}' for k, v in fields.items()), flush=True)

    def after_epoch(self, epoch: int, record: dict, spec: NetworkSpec, state: TrainState, steps: Steps,
                    requests: list[str] = ()):
        """requests: monitor actions for the growth phase ('grow', 'rollback') from this epoch."""
        self.val_accs.append(record['val_acc'])
        self.history.append(record)
        snap = self.snapshot
        if snap is not None and 'rollback' in requests:
            reason = 'the stability monitor asked for a rollback (divergence)'
        elif snap is not None and epoch - snap.epoch >= self.cfg.rollback_patience:
            self.snapshot, reason = None, None
            if record['val_acc'] < snap.val_acc - self.cfg.rollback_margin:
                reason = (f"val_acc {record['val_acc']:.4f} < {snap.val_acc:.4f} - margin "
                          f'{self.cfg.rollback_margin} after {epoch - snap.epoch} epochs')
        else:
            reason = None
        if reason is not None:
            self.snapshot = None
            self._event('growth_rollback', epoch, state, kind=snap.event['kind'], reason=reason)
            self.val_accs = [snap.val_acc]
            return snap.spec, snap.state, snap.steps
        kind = growth_policy.decide(self.cfg, epoch, self.val_accs, len(self.done))
        if kind is None and 'grow' in requests and len(self.done) < self.cfg.max_growths:
            kind = self.cfg.kind
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
                                txs=search_txs(c, self.ctx.weights_split.num_batches(c.search.batch_size)),
                                **growth_policy.options(kind, self.cfg))
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
        new_steps = self.build_steps(grown.spec)
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
        ckpt = (self.ctx.ckpt.save_pre_growth(snapshot_state, {'phase': self.phase, 'epoch': epoch,
                                                               'spec': spec.to_dict()})
                if self.ctx.ckpt is not None else None)
        self.snapshot = _Snapshot(spec, snapshot_state, steps, self.val_accs[-1], epoch, grown.event, ckpt)
        self.done.append(kind)
        self.val_accs = [self.val_accs[-1]]
        return grown.spec, new_state, new_steps


def optimize_phase(ctx: RunContext, genotype: Genotype, spec: NetworkSpec,
                   resume: tuple[dict, TrainState] | None = None) -> tuple[TrainState, dict]:
    """Trains a freshly initialised FixedNetwork(genotype) on the whole training set: the one
    FixedNetwork loop, `evaluate.train_fixed` (checkpoints, NaN rollback and `resume` = (meta,
    state) of an optimize-phase checkpoint when ctx.ckpt is set)."""
    from asose_jax import evaluate as evaluate_lib  # evaluate builds on this module
    cfg = evaluate_lib.FixedTrainConfig.from_config(ctx.config, spec.num_classes, spec)
    _, state, record = evaluate_lib.train_fixed(ctx, genotype, cfg, phase='optimize', resume=resume, spec=spec)
    return state, record

