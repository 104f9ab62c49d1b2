"""Growth inside the search phase: the Grower grows the network between epochs (growth.trigger, or
a monitor 'grow' request) within the caps, checks that the grown network computes the same logits,
compiles its new weight step (the compile time is logged with the growth), and rolls a growth back
when it does not pay off. Every decision is an event line in metrics.jsonl."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp

from asose_jax.growth import operations as growth
from asose_jax.growth import policy as growth_policy
from asose_jax.report import monitor
from asose_jax.run.context import RunContext
from asose_jax.search import parallel
from asose_jax.search.steps import Steps
from asose_jax.search.train_state import TrainState
from asose_jax.space.spec import NetworkSpec


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

    def __init__(self, ctx: RunContext, phase: str, build_steps: Callable[[NetworkSpec], Steps],
                 abstract_state: Callable[[NetworkSpec], TrainState], txs: tuple):
        """build_steps: the phase's steps of a spec; abstract_state: a spec's state shapes (a restore's
        target); txs: the (weight, arch) transforms whose states a growth carries over."""
        self.ctx, self.phase, self.cfg, self.build_steps = ctx, phase, ctx.config.growth, build_steps
        self.abstract_state, self.txs = abstract_state, txs
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

    def load(self, meta: dict) -> None:
        """Inverse of to_meta; the snapshot's network comes back from checkpoints_pre_growth/."""
        self.val_accs, self.history, self.done = list(meta['val_accs']), list(meta['history']), list(meta['done'])
        snap = meta['snapshot']
        if snap is not None:
            smeta, state = self.ctx.ckpt.restore_pre_growth(
                snap['ckpt'], lambda m: self.abstract_state(NetworkSpec.from_dict(m['spec'])))
            spec = NetworkSpec.from_dict(smeta['spec'])
            self.snapshot = _Snapshot(spec, jax.device_put(state), self.build_steps(spec), snap['val_acc'],
                                      snap['epoch'], snap['event'], snap['ckpt'])

    def _event(self, event: str, epoch: int, state: TrainState, **fields) -> None:
        self.ctx.writer.event(event, phase=self.phase, epoch=epoch, step=int(state.step), **fields)
        print(f'[{self.phase} {epoch + 1}] {event}: ' + ', '.join(f'{k}={v}' for k, v in fields.items()), flush=True)

    def accepts(self, request: str) -> bool:
        """Whether a monitor request can act now: 'grow' below growth.max_growths, 'rollback' with a
        pre-growth snapshot held."""
        return len(self.done) < self.cfg.max_growths if request == 'grow' else self.snapshot is not None

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

    def _compile(self, steps: Steps, state: TrainState) -> tuple[Steps, dict]:
        """The new network's weight and arch steps compiled now (from the persistent cache when a run
        of the same shapes filled it), so that the growth event carries their compile seconds."""
        batch = next(iter(self.ctx.weights_split.epoch_batches(self.ctx.keys['data_weights'],
                                                                self.ctx.config.search.batch_size)))
        compiled, seconds = {}, {}
        for name, key in (('weight_step', 'weight'), ('arch_step', 'arch')):
            if getattr(steps, name) is not None:
                t0 = time.time()
                compiled[name] = getattr(steps, name).lower(state, batch, self.ctx.keys[key]).compile()
                seconds[name] = round(time.time() - t0, 2)
        return dataclasses.replace(steps, **compiled), seconds

    def _try(self, kind: str, epoch: int, spec: NetworkSpec, state: TrainState, steps: Steps):
        c, t_start = self.ctx.config, time.time()
        snapshot_state = jax.tree_util.tree_map(jnp.copy, state)
        variables = {'params': state.params, 'batch_stats': state.batch_stats}
        try:
            grown = growth.grow(kind, spec, variables, (state.weight_opt_state, state.arch_opt_state),
                                jax.random.fold_in(self.ctx.keys['init'], int(state.step)),
                                txs=self.txs,
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
        compile_s = {}  # sharded steps compile at their first call (in that epoch's first_step_s)
        if c.parallel.data_parallel:
            new_steps, new_state = parallel.maybe_parallel(c, new_steps, new_state)
        else:
            new_steps, compile_s = self._compile(new_steps, new_state)
        _, after = new_steps.eval_step(new_state, self.check_batch)
        change = float(jnp.max(jnp.abs(before['logits'] - after['logits'])))
        fields = {**grown.event, 'max_logit_change': change,
                  'compile_s': round(sum(compile_s.values()), 2) if compile_s else None, 'compile_steps_s': compile_s,
                  'cells': grown.spec.layers, 'spec': grown.spec.to_dict()['cells'],
                  'growth_s': round(time.time() - t_start, 2)}  # surgery, compiles and the logit check
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
