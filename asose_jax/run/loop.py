"""The one phase loop. Warmup, search, optimize and the evaluation CLI's training all run
`run_phase`: epochs of jitted steps, an evaluation, one metrics line, a checkpoint. What differs
between them is data (a PhasePlan: which split, which keys, arch steps or none) and a PhaseKind
(the record's extra fields and what an epoch's end does: the monitor and growth, or nothing)."""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from asose_jax.data.cifar import DeviceSplit
from asose_jax.run.context import RunContext
from asose_jax.search import parallel
from asose_jax.search.steps import Steps
from asose_jax.search.train_state import TrainState, with_hparams
from asose_jax.space.spec import NetworkSpec

# Called after every weight step as cb(phase, state) -> state; empty in the product. Tests install
# fault injectors here (tests/fault_injection.py: SIGKILL, SIGTERM or NaN weights at a given step).
STEP_CALLBACKS: list[Callable[[str, TrainState], TrainState]] = []
STOP = {'signal': None}  # set by train.py's SIGTERM/SIGINT handler; checked between steps
TIMING_FIELDS = ('images_per_sec', 'first_step_s')  # NaN when an epoch had no timed steps (e.g. resumed at its end)


class Interrupted(Exception):
    """A stop signal arrived: the current step finished and a checkpoint was saved."""


def stop_message(workdir: str) -> str:
    return (f'stopped by signal {STOP["signal"]} after the current step; a checkpoint was saved in '
            f'{workdir}/checkpoints. Resume with the same command (same --config and --workdir).')


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """What a phase trains on, as data. Batches of epoch e are ordered by fold_in(data_key, step at
    the epoch start); with arch_every > 0 an arch step on the next arch_split batch follows every
    arch_every-th weight step (the arch stream reshuffled on each pass: pass p by fold_in(arch_key, p))."""

    name: str
    epochs: int
    split: DeviceSplit
    batch_size: int
    data_key: Any
    step_key: Any
    arch_every: int = 0
    arch_split: DeviceSplit | None = None
    arch_data_key: Any = None
    arch_step_key: Any = None

    @property
    def n_batches(self) -> int:
        return self.split.num_batches(self.batch_size)


@dataclasses.dataclass
class PhaseRun:
    """The progress of one phase, passed explicitly (what a checkpoint's meta records): the network
    spec, the state, its compiled steps, the knobs behind the state's hparams, and the position."""

    spec: NetworkSpec | None
    state: TrainState
    steps: Steps
    knobs: dict
    epoch: int = 0
    batch: int = 0                # batches of `epoch` already done (a resume inside an epoch)
    partial: dict | None = None   # their raw per-step metrics


class PhaseKind(Protocol):
    """The per-phase behaviour run_phase calls; the search's and the retrain's implement it."""

    def hparams(self, state: TrainState, knobs: dict) -> TrainState: ...  # the knobs into the state
    def record_fields(self, run: PhaseRun) -> dict: ...          # extra fields of the epoch's record
    def end_epoch(self, run: PhaseRun, record: dict) -> bool: ...  # write it, act on it; True: stop
    def meta(self, run: PhaseRun) -> dict: ...                   # extra checkpoint meta


def set_hparams(state: TrainState, knobs: dict, arch_weight_decay: float) -> TrainState:
    """The state's runtime hyper-parameters from the phase's knobs (what the monitor and the NaN guard
    change, and what a checkpoint's meta records): new values, same program."""
    wd = knobs.get('arch_weight_decay', arch_weight_decay)
    return with_hparams(state, lr_scale=knobs.get('lr_scale', 1.0), arch_lr_scale=knobs.get('arch_lr_scale', 1.0),
                        arch_wd_scale=wd / arch_weight_decay if arch_weight_decay else 1.0,
                        tau_scale=knobs.get('tau_scale', 1.0))


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


def cycle(split: DeviceSplit, key, batch_size: int, start: int = 0) -> Iterator[dict]:
    """Endless batches of a split, reshuffled on every pass, the first `start` skipped (pass p's order
    is fold_in(key, p), so any position can be recreated)."""
    n = split.num_batches(batch_size)
    epoch, skip = divmod(start, n)
    while True:
        yield from split.epoch_batches(jax.random.fold_in(key, epoch), batch_size, skip)
        epoch, skip = epoch + 1, 0


def run_epoch(ctx: RunContext, plan: PhasePlan, run: PhaseRun):
    """Runs the weight (and arch) steps of epoch run.epoch from batch run.batch on; returns (mean train
    metrics, images/s, first-step s, batches done). The first steps (those that compile: the first
    weight step, and the first arch step) count as first-step time, not throughput. Stops early,
    after the current step, when a stop signal arrived: then the metrics are the raw per-step lists."""
    n, skip, every = plan.n_batches, run.batch, plan.arch_every
    data_key = jax.random.fold_in(plan.data_key, int(run.state.step) - skip)  # the epoch start's step
    batches = plan.split.epoch_batches(data_key, plan.batch_size, skip)
    arch = (cycle(plan.arch_split, plan.arch_data_key, plan.batch_size, run.epoch * (n // every) + skip // every)
            if every else None)
    sums: dict = {k: [jnp.float32(x) for x in v] for k, v in (run.partial or {}).items()} if skip else {}
    t_first = t0 = time.time()
    first_step_s, images, done = 0.0, 0, skip
    for i, batch in enumerate(tqdm(batches, total=n - skip, desc=f'{plan.name} {run.epoch + 1}/{plan.epochs}',
                                   disable=not ctx.progress, leave=False), start=skip):
        run.state, m = run.steps.weight_step(run.state, batch, plan.step_key)
        for callback in STEP_CALLBACKS:
            run.state = callback(plan.name, run.state)
        if arch is not None and (i + 1) % every == 0:
            run.state, extra = run.steps.arch_step(run.state, next(arch), plan.arch_step_key)
            m = {**m, **extra}
        for k, v in m.items():
            sums.setdefault(k, []).append(v)
        done = i + 1
        if i < skip + (every or 1):
            jax.block_until_ready(run.state.step)
            first_step_s = time.time() - t_first
            t0 = time.time()
        else:
            images += batch['label'].shape[0]
        if STOP['signal'] is not None and done < n:
            break
    jax.block_until_ready(run.state.step)
    elapsed = time.time() - t0
    if done < n:  # interrupted: the raw per-step metrics go into the checkpoint
        return {k: [float(x) for x in jax.device_get(v)] for k, v in sums.items()}, 0.0, 0.0, done
    means = {k: float(np.mean(jax.device_get(jnp.stack(v)))) for k, v in sums.items()}
    return means, (images / elapsed if elapsed > 0 and images else float('nan')), first_step_s, done


def _non_finite(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items()
            if isinstance(v, float) and not np.isfinite(v) and k not in TIMING_FIELDS}


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


def save(ctx: RunContext, plan: PhasePlan, kind: PhaseKind, run: PhaseRun, val_acc=None,
         partial: dict | None = None) -> None:
    """A checkpoint of the run at its position (the phase's meta from `kind`); none without ctx.ckpt."""
    if ctx.ckpt is not None:
        ctx.ckpt.save(run.state, {'phase': plan.name, 'epoch': run.epoch, 'batch': run.batch, 'knobs': run.knobs,
                                  'partial': partial, 'metrics_lines': len(ctx.writer.read()),
                                  'config': json.loads(ctx.config.to_json_best_effort()), **kind.meta(run)}, val_acc)


def run_phase(ctx: RunContext, plan: PhasePlan, kind: PhaseKind, run: PhaseRun) -> PhaseRun:
    """Epochs run.epoch..plan.epochs-1: train, evaluate, check for non-finite values (NanGuard: the
    epoch is retried from its start), hand the record to `kind`, save a checkpoint. A stop signal
    saves the position inside the epoch and raises Interrupted; kind.end_epoch returning True ends
    the phase (its checkpoint marks the phase done)."""
    guard = NanGuard(ctx, plan.name)
    while run.epoch < plan.epochs:
        guard.remember(run.state)
        t_epoch = time.time()
        train_m, ips, first_s, done = run_epoch(ctx, plan, run)
        if done < plan.n_batches:  # a stop signal: save the position inside the epoch and leave
            run.batch = done
            save(ctx, plan, kind, run, partial=train_m)
            raise Interrupted(stop_message(ctx.workdir))
        run.batch, run.partial = 0, None
        record = {'phase': plan.name, 'epoch': run.epoch, 'step': int(run.state.step), 'images_per_sec': ips,
                  'first_step_s': first_s, **kind.record_fields(run), **train_m,
                  **evaluate(run.steps, run.state, ctx.eval_split, ctx.config.data.eval_batch_size, ctx.progress)}
        record['epoch_s'] = time.time() - t_epoch  # train and evaluate, compiles included (a resumed epoch: its rest)
        retry = guard.check(run.epoch, record, run.knobs)
        if retry is not None:
            run.state = parallel.maybe_replicate(ctx.config, kind.hparams(retry, run.knobs))
            continue
        stop = kind.end_epoch(run, record)
        run.epoch = plan.epochs if stop else run.epoch + 1
        save(ctx, plan, kind, run, val_acc=record['val_acc'])
        if stop:
            break
    return run
