"""Phase drivers: warmup -> search -> (growth hook) -> optimize.

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
from asose_jax import monitor, stability
from asose_jax.data import DeviceSplit
from asose_jax.genotype import Genotype, derive
from asose_jax.network import FixedNetwork, count_params
from asose_jax.optim import WeightOptConfig, arch_transform, weight_schedule, weight_transform
from asose_jax.spec import NetworkSpec
from asose_jax.steps import Steps, make_fixed_steps, make_search_steps
from asose_jax.train_state import TrainState, create_train_state

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
    # monitor actions search_phase cannot take itself ('grow', 'rollback'), oldest first; the caller
    # acts on them (growth, checkpoint restore) and clears the list
    pending_actions: list = dataclasses.field(default_factory=list)

    @property
    def progress(self) -> bool:
        return bool(self.config.progress) and sys.stderr.isatty()


def genotype_of(spec: NetworkSpec, params: dict) -> Genotype:
    arch = jax.device_get(params['arch'])
    return derive(arch['normal'], arch['reduce'], spec.steps, spec.multiplier, spec.primitives)


def evaluate(steps: Steps, state: TrainState, split: DeviceSplit, batch_size: int, progress: bool = False) -> dict:
    total, loss, acc = 0.0, 0.0, 0.0
    n = -(-len(split) // batch_size)
    for batch in tqdm(split.eval_batches(batch_size), total=n, desc='eval', disable=not progress, leave=False):
        _, m = steps.eval_step(state, batch)
        m = jax.device_get(m)
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


def search_phase(ctx: RunContext, phase: str, spec: NetworkSpec, state: TrainState, epochs: int,
                 first_epoch: int = 0, stop_on: tuple[str, ...] = ()) -> TrainState:
    """warmup: weight steps on uniform edge weights. search: weight steps on the weight half, an
    arch step on the arch half every `arch_every` weight steps; genotype saved every epoch.

    After each epoch the stability monitor (stability.assess) and the collapse guard run; every
    action is logged (`"event": "monitor_action"` + print); in warmup only divergence acts, and
    the collapse guard only warns in search. Taken here: 'lower_arch_lr' and
    'raise_tau' (rebuild the steps; optimizer states carry over), 'stop' (end the phase), and the
    collapse remedy 'raise_arch_wd'. 'grow' and 'rollback' are appended to ctx.pending_actions;
    the phase ends after that epoch when their kind is in `stop_on` (else it runs on).
    """
    c = ctx.config
    mcfg = stability.MonitorConfig.from_config(c.monitor)
    if set(stop_on) - set(stability.CALLER_ACTIONS):
        raise ValueError(f'search_phase: stop_on={stop_on!r}; allowed kinds: {stability.CALLER_ACTIONS}')
    bs = c.search.batch_size
    n_batches = ctx.weights_split.num_batches(bs)
    tau_steps = max(c.search.search_epochs * n_batches, 1)
    wcfg = config_lib.weight_opt_config(c)
    acfg = config_lib.arch_opt_config(c)
    total_steps = (c.search.warmup_epochs + c.search.search_epochs) * n_batches
    weight_tx = weight_transform(wcfg, total_steps)
    step_cfg = config_lib.search_step_config(c, phase, tau_steps)
    knobs = {'arch_lr_scale': 1.0, 'tau_scale': 1.0, 'arch_weight_decay': acfg.weight_decay}

    def build_steps():
        """Steps for the current knobs. Only hyper-parameters change, so the Adam state carries over."""
        arch_tx = (arch_transform(dataclasses.replace(acfg, weight_decay=knobs['arch_weight_decay']),
                                  knobs['arch_lr_scale']) if phase == 'search' else None)
        cfg = dataclasses.replace(step_cfg, tau_max=step_cfg.tau_max * knobs['tau_scale'],
                                  tau_min=step_cfg.tau_min * knobs['tau_scale'])
        return make_search_steps(spec, cfg, weight_tx, arch_tx)

    steps = build_steps()
    arch_batches = _cycle(ctx.arch_split, ctx.keys['data_arch'], bs) if phase == 'search' else None
    lr_at = weight_schedule(wcfg, total_steps)

    def arch_after(st, i):
        if (i + 1) % c.search.arch_every:
            return st, {}
        return steps.arch_step(st, next(arch_batches), ctx.keys['arch'])

    def log_action(epoch: int, action: stability.Action, applied: bool, **fields) -> None:
        ctx.writer.event(stability.ACTION_EVENT, phase=phase, epoch=epoch, action=action.kind,
                         condition=action.condition, reason=action.reason, applied=applied, **fields)
        print(f'[monitor] {action.kind} ({"applied" if applied else "pending"}): {action.reason}', flush=True)

    for epoch in range(first_epoch, epochs):
        data_key = jax.random.fold_in(ctx.keys['data_weights'], int(state.step))
        state, train_m, ips, first_s = _run_epoch(
            ctx, steps, state, ctx.weights_split.epoch_batches(data_key, bs), n_batches,
            f'{phase} {epoch + 1}/{epochs}', ctx.keys['weight'], arch_after if arch_batches else None)
        record = {'phase': phase, 'epoch': epoch, 'step': int(state.step), 'images_per_sec': ips,
                  'first_step_s': first_s, 'lr': float(lr_at(int(state.step))), **train_m,
                  **evaluate(steps, state, ctx.eval_split, c.data.eval_batch_size, ctx.progress)}
        if phase == 'search':
            record.update(arch_lr=knobs['arch_lr_scale'] * acfg.lr, arch_weight_decay=knobs['arch_weight_decay'])
        finite = all(np.isfinite(v) for v in record.values() if isinstance(v, float))
        guard = None
        if finite:
            arch = jax.device_get(state.params['arch'])
            guard = stability.guarded_genotype(arch, mcfg, spec.steps, spec.multiplier, spec.primitives)
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
        if finite:
            monitor.save_genotype(os.path.join(ctx.workdir, 'genotypes', f'{phase}_epoch{epoch:03d}.json'), g,
                                  alphas=arch, primitives=spec.primitives, epoch=epoch, val_acc=record['val_acc'],
                                  raw_genotype=str(guard.raw), capped=guard.capped)
        rebuild, stop = False, False
        if guard is not None and guard.condition is not None and phase == 'search':  # warmup logits are untrained
            remedy = mcfg.collapse_remedy
            applied = remedy == 'cap_skip' or (remedy == 'raise_arch_wd' and phase == 'search'
                                               and knobs['arch_weight_decay'] == acfg.weight_decay)
            if remedy == 'raise_arch_wd' and applied:  # once per phase: each rebuild recompiles
                knobs['arch_weight_decay'] = acfg.weight_decay * mcfg.arch_wd_factor
                rebuild = True
            ctx.writer.event('collapse_warning', phase=phase, epoch=epoch, reason=guard.condition.reason,
                             remedy=remedy, applied=applied, raw_genotype=str(guard.raw), genotype=str(g),
                             arch_weight_decay=knobs['arch_weight_decay'])
            print(f'[monitor] WARNING collapse to parameter-free ops: {guard.condition.reason}; remedy {remedy}'
                  f'{" (applied)" if applied else ""}', flush=True)
        # warmup trains no arch logits and grows nothing: only divergence acts there
        for action in [a for a in assessment.actions if phase == 'search' or a.condition == 'divergence']:
            if action.kind == 'lower_arch_lr':
                knobs['arch_lr_scale'] *= action.factor
                rebuild = True
                log_action(epoch, action, True, arch_lr=knobs['arch_lr_scale'] * acfg.lr)
            elif action.kind == 'raise_tau':
                knobs['tau_scale'] *= action.factor
                rebuild = True
                log_action(epoch, action, True, tau_scale=knobs['tau_scale'])
            elif action.kind == 'stop':
                stop = True
                log_action(epoch, action, True)
            else:  # 'grow' / 'rollback': the caller's
                ctx.pending_actions.append(action)
                stop = stop or action.kind in stop_on
                log_action(epoch, action, False, stops_phase=action.kind in stop_on)
        rolls_back = stop and 'rollback' in stop_on and any(a.kind == 'rollback' for a in assessment.actions)
        if not finite and not rolls_back:
            _check_finite(phase, epoch, record)  # non-finite: stop the run unless the caller rolls back
        print(f"[{phase} {epoch + 1}/{epochs}] loss {record['loss']:.3f} acc {record['acc']:.3f} "
              f"val_acc {record['val_acc']:.3f} tau {record['tau']:.2f} {ips:.1f} img/s "
              f"health {record['health']:.2f}", flush=True)
        if stop:
            break
        if rebuild:
            steps = build_steps()
    return state


def growth_hook(ctx: RunContext, spec: NetworkSpec, state: TrainState) -> tuple[NetworkSpec, TrainState]:
    """Where the growth phase plugs in between search and optimize (see growth.py, issue 8).

    Contract: returns a (spec', state') whose eval-mode logits equal the input's; the caller
    rebuilds its steps for spec'. Without growth configured, the identity.
    """
    return spec, state


def optimize_phase(ctx: RunContext, genotype: Genotype, spec: NetworkSpec) -> tuple[TrainState, dict]:
    """Trains a freshly initialised FixedNetwork(genotype) on the whole training set."""
    c, o = ctx.config, ctx.config.optimize
    model = FixedNetwork(genotype, C=o.C or c.model.C, layers=o.layers or c.model.layers,
                         num_classes=spec.num_classes, stem_multiplier=c.model.stem_multiplier,
                         auxiliary=o.auxiliary, drop_path_rate=o.drop_path, depthwise_impl=o.depthwise_impl)
    n_batches = ctx.train_split.num_batches(o.batch_size)
    wcfg = WeightOptConfig(lr=o.lr, lr_min=o.lr_min, momentum=o.momentum, weight_decay=o.weight_decay,
                           grad_clip=o.grad_clip)
    weight_tx = weight_transform(wcfg, max(o.epochs * n_batches, 1))
    size = ctx.train_split.images.shape[1]
    variables = jax.jit(lambda k: model.init({'params': k, 'dropout': k}, jnp.zeros((2, size, size, 3)),
                                             train=False))(ctx.keys['optimize_init'])
    params = {'weights': variables['params'], 'arch': {}}
    state = create_train_state({'params': params, 'batch_stats': variables.get('batch_stats', {})},
                               weight_tx, arch_transform(config_lib.arch_opt_config(c)))
    steps = make_fixed_steps(model, weight_tx, o.cutout, o.aux_weight)
    n_params = count_params(params['weights'])
    record = {}
    for epoch in range(o.epochs):
        data_key = jax.random.fold_in(ctx.keys['data_optimize'], int(state.step))
        state, train_m, ips, first_s = _run_epoch(
            ctx, steps, state, ctx.train_split.epoch_batches(data_key, o.batch_size), n_batches,
            f'optimize {epoch + 1}/{o.epochs}', ctx.keys['optimize'])
        record = {'phase': 'optimize', 'epoch': epoch, 'step': int(state.step), 'images_per_sec': ips,
                  'first_step_s': first_s, 'params': n_params, **train_m,
                  **evaluate(steps, state, ctx.eval_split, c.data.eval_batch_size)}
        _check_finite('optimize', epoch, record)
        ctx.writer.write(record)
        print(f"[optimize {epoch + 1}/{o.epochs}] loss {record['loss']:.3f} acc {record['acc']:.3f} "
              f"val_acc {record['val_acc']:.3f} {ips:.1f} img/s", flush=True)
    return state, record
