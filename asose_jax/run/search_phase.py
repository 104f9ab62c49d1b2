"""Warmup and search as phases of the one loop (run/loop.py): weight steps on the weight half (and,
in search, an arch step on the arch half every `arch_every` weight steps); after each epoch the
genotype is derived and saved, the stability monitor and the collapse guard run and act, and in
search the Grower grows the network or rolls a growth back."""
from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from asose_jax.report import monitor
from asose_jax.run import config as config_lib
from asose_jax.run.context import RunContext
from asose_jax.run.grower import Grower
from asose_jax.run.loop import PhasePlan, PhaseRun, run_phase, set_hparams
from asose_jax.search import parallel, stability
from asose_jax.search.optim import arch_transform, hparam_transforms, weight_schedule, weight_transform
from asose_jax.search.steps import Steps, make_search_steps
from asose_jax.search.train_state import TrainState, create_train_state
from asose_jax.space.network import init_search_variables
from asose_jax.space.spec import NetworkSpec


def total_steps(c: ml_collections.ConfigDict, n_batches: int) -> int:
    """Weight steps of warmup and search together: the span of their one cosine schedule."""
    return (c.search.warmup_epochs + c.search.search_epochs) * n_batches


def search_txs(c: ml_collections.ConfigDict, n_batches: int) -> tuple:
    """The (weight, arch) transforms of warmup and search: one cosine over both phases' steps."""
    return (weight_transform(config_lib.weight_opt_config(c), total_steps(c, n_batches)),
            arch_transform(config_lib.arch_opt_config(c)))


def abstract_search_state(ctx: RunContext, spec: NetworkSpec):
    """Shapes and dtypes of a search TrainState for `spec` (no computation): a restore's target."""
    c = ctx.config
    txs = search_txs(c, ctx.weights_split.num_batches(c.search.batch_size))
    size = int(ctx.train_split.images.shape[1])
    impl = config_lib.execution_form(c)['depthwise_impl']
    return jax.eval_shape(lambda k: create_train_state(init_search_variables(spec, k, size, impl), *txs),
                          ctx.keys['init'])


class SearchKind:
    """The warmup/search end of an epoch (loop.PhaseKind). In warmup only divergence acts and the
    collapse guard is silent (the logits are untrained). Monitor actions: 'lower_arch_lr' and
    'raise_tau' scale the state's hparams (no recompile), 'stop' ends the phase, the collapse remedy
    'raise_arch_wd' raises the arch weight decay once; 'grow'/'rollback' go to the Grower."""

    def __init__(self, ctx: RunContext, phase: str, epochs: int):
        c = ctx.config
        self.ctx, self.phase, self.epochs = ctx, phase, epochs
        self.mcfg = stability.MonitorConfig.from_config(c.monitor)
        self.wcfg, self.acfg = config_lib.weight_opt_config(c), config_lib.arch_opt_config(c)
        n_batches = ctx.weights_split.num_batches(c.search.batch_size)
        self.total_steps = total_steps(c, n_batches)
        self.step_cfg = config_lib.search_step_config(c, phase, n_batches)
        self.txs = hparam_transforms(self.wcfg, self.acfg, self.total_steps)
        self.grower = (Grower(ctx, phase, self.build_steps, lambda s: abstract_search_state(ctx, s),
                              search_txs(c, n_batches)) if phase == 'search' else None)

    def build_steps(self, spec: NetworkSpec) -> Steps:
        """Steps for a spec; the knobs are the state's hparams (set_hparams), so only a new spec compiles."""
        weight_tx, arch_tx = self.txs
        return make_search_steps(spec, self.step_cfg, weight_tx, arch_tx if self.phase == 'search' else None)

    def hparams(self, state: TrainState, knobs: dict) -> TrainState:
        return set_hparams(state, knobs, self.acfg.weight_decay)

    def record_fields(self, run: PhaseRun) -> dict:
        w, k = self.wcfg, run.knobs
        lr_at = weight_schedule(dataclasses.replace(w, lr=w.lr * k['lr_scale'], lr_min=w.lr_min * k['lr_scale']),
                                self.total_steps)
        fields = {'cells': run.spec.layers, 'lr': float(lr_at(int(run.state.step)))}
        if self.phase == 'search':
            fields.update(arch_lr=k['arch_lr_scale'] * self.acfg.lr, arch_weight_decay=k['arch_weight_decay'])
        return fields

    def meta(self, run: PhaseRun) -> dict:
        return {'spec': run.spec.to_dict(), 'grower': self.grower.to_meta() if self.grower else None}

    def end_epoch(self, run: PhaseRun, record: dict) -> bool:
        guard = self._record_arch(run, record)
        rescale = self._collapse(run, record['epoch'], guard)
        assessment = stability.assess(self.ctx.writer.read() + [record], self.mcfg)
        record['health'] = assessment.health
        record['conditions'] = [cond.kind for cond in assessment.conditions]
        self.ctx.writer.write(record)
        monitor.save_genotype(os.path.join(self.ctx.workdir, 'genotypes', f'{self.phase}_epoch{record["epoch"]:03d}.json'),
                              guard.genotype, alphas=jax.device_get(run.state.params['arch']),
                              primitives=run.spec.primitives, epoch=record['epoch'], val_acc=record['val_acc'],
                              raw_genotype=str(guard.raw), capped=guard.capped)
        more, stop, requests = self._act(run, record['epoch'], assessment)
        print(f"[{self.phase} {record['epoch'] + 1}/{self.epochs}] loss {record['loss']:.3f} acc {record['acc']:.3f} "
              f"val_acc {record['val_acc']:.3f} tau {record['tau']:.2f} {record['images_per_sec']:.1f} img/s "
              f"health {record['health']:.2f}", flush=True)
        if (rescale or more) and not stop:  # new hyper-parameter values in the state: nothing recompiles
            run.state = self.hparams(run.state, run.knobs)
        if self.grower is not None and record['epoch'] < self.epochs - 1 and not stop:
            run.spec, run.state, run.steps = self.grower.after_epoch(record['epoch'], record, run.spec, run.state,
                                                                     run.steps, requests)
            run.state = self.hparams(run.state, run.knobs)  # a rolled-back snapshot holds older ones
        return stop

    def _record_arch(self, run: PhaseRun, record: dict) -> stability.Guarded:
        """The epoch's genotype (through the collapse guard) and arch statistics, into the record."""
        arch, spec = jax.device_get(run.state.params['arch']), run.spec
        guard = stability.guarded_genotype(arch, self.mcfg, spec.steps, spec.multiplier, spec.primitives, spec.space)
        record.update({f'entropy_{t}': monitor.arch_entropy(a) for t, a in arch.items()})
        record['arch_entropy'] = float(np.mean([record[f'entropy_{t}'] for t in arch]))
        record.update(monitor.op_weights(arch, spec.primitives))
        record.update(monitor.genotype_stats(guard.genotype))
        record['genotype'] = str(guard.genotype)
        record['collapse'] = guard.condition is not None
        return guard

    def _collapse(self, run: PhaseRun, epoch: int, guard: stability.Guarded) -> bool:
        """Warns of a collapse to parameter-free ops (search only) and applies the remedy; True when
        the knobs changed."""
        if guard.condition is None or self.phase != 'search':  # warmup logits are untrained
            return False
        remedy, base_wd = self.mcfg.collapse_remedy, self.acfg.weight_decay
        applied = remedy == 'cap_skip' or (remedy == 'raise_arch_wd' and run.knobs['arch_weight_decay'] == base_wd)
        rescale = remedy == 'raise_arch_wd' and applied  # once per phase
        if rescale:
            run.knobs['arch_weight_decay'] = base_wd * self.mcfg.arch_wd_factor
        self.ctx.writer.event('collapse_warning', phase=self.phase, epoch=epoch, reason=guard.condition.reason,
                              remedy=remedy, applied=applied, raw_genotype=str(guard.raw), genotype=str(guard.genotype),
                              arch_weight_decay=run.knobs['arch_weight_decay'])
        print(f'[monitor] WARNING collapse to parameter-free ops: {guard.condition.reason}; remedy {remedy}'
              f'{" (applied)" if applied else ""}', flush=True)
        return rescale

    def _act(self, run: PhaseRun, epoch: int, assessment: stability.Assessment) -> tuple[bool, bool, list[str]]:
        """Applies the monitor's actions; returns (knobs changed, stop, requests for the Grower)."""
        rescale, stop, requests = False, False, []
        # warmup trains no arch logits and grows nothing: only divergence acts there
        for action in [a for a in assessment.actions if self.phase == 'search' or a.condition == 'divergence']:
            fields, applied = {}, True
            if action.kind == 'lower_arch_lr':
                run.knobs['arch_lr_scale'] *= action.factor
                rescale, fields = True, {'arch_lr': run.knobs['arch_lr_scale'] * self.acfg.lr}
            elif action.kind == 'raise_tau':
                run.knobs['tau_scale'] *= action.factor
                rescale, fields = True, {'tau_scale': run.knobs['tau_scale']}
            elif action.kind == 'stop':
                stop = True
            else:  # 'grow' / 'rollback': the Grower's (search only)
                requests.append(action.kind)
                applied = self.grower is not None and epoch < self.epochs - 1 and self.grower.accepts(action.kind)
                fields = {'handled_by': 'growth'}
            self.ctx.writer.event(stability.ACTION_EVENT, phase=self.phase, epoch=epoch, action=action.kind,
                                  condition=action.condition, reason=action.reason, applied=applied, **fields)
            print(f'[monitor] {action.kind} ({"applied" if applied else "not applied"}): {action.reason}', flush=True)
        return rescale, stop, requests


def search_phase(ctx: RunContext, phase: str, spec: NetworkSpec, state: TrainState, epochs: int,
                 resume: dict | None = None) -> tuple[NetworkSpec, TrainState]:
    """Runs warmup or search (`phase`) for `epochs` epochs; returns the (possibly grown) spec and the
    state. `resume` (a checkpoint's meta of this phase) restarts at its epoch and batch with its
    knobs and grower state."""
    c, resume = ctx.config, resume or {}
    kind = SearchKind(ctx, phase, epochs)
    knobs = {'arch_lr_scale': 1.0, 'tau_scale': 1.0, 'arch_weight_decay': kind.acfg.weight_decay, 'lr_scale': 1.0,
             **resume.get('knobs', {})}
    steps, state = parallel.maybe_parallel(c, kind.build_steps(spec), kind.hparams(state, knobs))
    if kind.grower is not None and resume.get('grower'):
        kind.grower.load(resume['grower'])
    search = phase == 'search'
    plan = PhasePlan(phase, epochs, ctx.weights_split, c.search.batch_size, ctx.keys['data_weights'],
                     ctx.keys['weight'], arch_every=c.search.arch_every if search else 0,
                     arch_split=ctx.arch_split if search else None, arch_data_key=ctx.keys['data_arch'],
                     arch_step_key=ctx.keys['arch'])
    run = PhaseRun(spec, state, steps, knobs, epoch=resume.get('epoch', 0), batch=resume.get('batch', 0),
                   partial=resume.get('partial'))
    run = run_phase(ctx, plan, kind, run)
    return run.spec, run.state
