"""Entry point: `python -m asose_jax.train --config configs/cifar10.py[:smoke] --workdir DIR`.

`--config.x=y` overrides any field. Everything is validated before data is read or code compiles.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from asose_jax.benchmarks import nats_bench
from asose_jax.report import monitor, visualize
from asose_jax.run import checkpoint, context, loop, retrain, search_phase
from asose_jax.run import config as config_lib
from asose_jax.search import stability
from asose_jax.search.compilation import enable_compilation_cache, fast_compile, rarely_run
from asose_jax.search.train_state import create_train_state
from asose_jax.space.genotype import genotype_from_dict
from asose_jax.space.network import count_params, init_search_variables
from asose_jax.space.spec import NetworkSpec

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cifar10.py:smoke.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (metrics, genotypes).')


def _truncate_metrics(workdir: str, lines: int) -> None:
    """Drops metrics.jsonl lines written after the checkpoint a run resumes from."""
    path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if line.strip()][:lines]
        with open(path, 'w') as f:
            f.writelines(kept)


def _resume(c: ml_collections.ConfigDict, ctx: context.RunContext):
    """(meta, state) of the latest readable checkpoint, or None. Refuses config changes that alter
    shapes or data (checkpoint.fresh=True starts over instead)."""
    def abstract(meta):
        bad = checkpoint.incompatible_fields(meta['config'], checkpoint.config_dict(c))
        if bad:
            raise config_lib.ConfigError(
                f'{ctx.workdir} holds a checkpoint of a run whose config differs in {bad}, which change the '
                'network, the data or their order, so it cannot resume. Use the original values, another '
                '--workdir, or --config.checkpoint.fresh=True (moves the old workdir aside, deletes nothing).')
        spec = NetworkSpec.from_dict(meta['spec'])
        if meta['phase'] == 'optimize':
            cfg = retrain.FixedTrainConfig.from_config(c, spec.num_classes, spec)
            return retrain.fixed_state(ctx, cfg.model(genotype_from_dict(meta['genotype'])), cfg, materialise=False)
        return search_phase.abstract_search_state(ctx, spec)
    found = ctx.ckpt.restore_latest(abstract)
    if found is None:
        return None
    number, meta, state = found
    print(f"resuming from checkpoint {number}: {meta['phase']} epoch {meta['epoch']} batch {meta['batch']} "
          f'(step {int(state.step)})', flush=True)
    return meta, jax.device_put(state)


def _open_run(c: ml_collections.ConfigDict, workdir: str) -> tuple[context.RunContext, tuple | None, float]:
    """The run's context over a validated config and its data, and the checkpoint it resumes from
    (metrics.jsonl cut back to that checkpoint's lines), or None; and the start time."""
    config_lib.validate(c)
    splits = context.load_splits(c)
    ck = c.get('checkpoint', None)
    if ck is not None and ck.fresh:
        moved = checkpoint.move_aside(workdir)
        if moved:
            print(f'checkpoint.fresh: moved the old {workdir} to {moved}', flush=True)
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    ckpt = checkpoint.RunCheckpoints(workdir, ck.max_to_keep) if ck is not None and ck.enabled else None
    ctx = context.RunContext(c, workdir, splits['weights'], splits['arch'], splits['train'], splits['eval'],
                             context.key_streams(c.seed), None, ckpt)
    resume = _resume(c, ctx) if ckpt is not None else None
    if resume is not None:
        _truncate_metrics(workdir, resume[0]['metrics_lines'])
    elif ckpt is not None and os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
        _truncate_metrics(workdir, 0)  # killed before the first checkpoint: start over
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(c.to_json_best_effort(indent=1))
    ctx.writer = monitor.MetricsWriter(workdir)
    return ctx, resume, t_start


def _new_search_state(ctx: context.RunContext):
    """(spec, state) of a fresh search network from the config."""
    c = ctx.config
    spec = config_lib.network_spec(c)
    # the init runs once but compiles the whole forward pass: unoptimised on the CPU
    variables = rarely_run(init_search_variables)(spec, ctx.keys['init'], ctx.train_split.images.shape[1],
                                                  config_lib.execution_form(c)['depthwise_impl'])
    print(f'search network: {count_params(variables["params"]["weights"]):,} weights, '
          f'{count_params(variables["params"]["arch"])} arch logits', flush=True)
    txs = search_phase.search_txs(c, ctx.weights_split.num_batches(c.search.batch_size))
    return spec, create_train_state(variables, *txs)


def _search(ctx: context.RunContext, resume: tuple | None):
    """Warmup then search, from the start or from the phase and position of `resume`; returns the
    (possibly grown) spec and the state."""
    c = ctx.config
    phase = resume[0]['phase'] if resume else 'warmup'
    spec, state = (NetworkSpec.from_dict(resume[0]['spec']), resume[1]) if resume else _new_search_state(ctx)
    with fast_compile(c.search.fast_compile):
        if phase == 'warmup':
            spec, state = search_phase.search_phase(ctx, 'warmup', spec, state, c.search.warmup_epochs,
                                                    resume=resume[0] if resume else None)
        spec, state = search_phase.search_phase(ctx, 'search', spec, state, c.search.search_epochs,
                                                resume=resume[0] if phase == 'search' else None)
    return spec, state


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs warmup -> search (growing between epochs if configured) -> optimize; returns the summary.

    With checkpoint.enabled, a workdir holding checkpoints is resumed from the latest readable one
    (same phase, epoch, step, data order and noise)."""
    ctx, resume, t_start = _open_run(c, workdir)
    if resume is not None and resume[0]['phase'] == 'optimize':
        spec, genotype = NetworkSpec.from_dict(resume[0]['spec']), genotype_from_dict(resume[0]['genotype'])
    else:
        spec, state = _search(ctx, resume)
        genotype, resume = _derive_and_save(c, workdir, spec, state), None
    _, final = retrain.optimize_phase(ctx, genotype, spec, resume)
    summary = {'genotype': str(genotype), 'val_acc': final.get('val_acc', float('nan')),
               'wall_s': time.time() - t_start, **nats_bench.summary_fields(genotype)}
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    ctx.writer.close()
    if ctx.ckpt is not None:
        ctx.ckpt.close()
    print(f"done in {summary['wall_s']:.0f}s: val_acc {summary['val_acc']:.4f}", flush=True)
    return summary


def _derive_and_save(c, workdir, spec, state):
    """The search's final genotype (through the collapse guard), written with its pictures and the spec."""
    guarded = stability.guarded_genotype(jax.device_get(state.params['arch']),
                                         stability.MonitorConfig.from_config(c.monitor), spec.steps,
                                         spec.multiplier, spec.primitives, spec.space)
    genotype = guarded.genotype  # the space's derivation, skip-capped when monitor.collapse_remedy='cap_skip'
    monitor.save_genotype(os.path.join(workdir, 'genotype.json'), genotype, raw_genotype=str(guarded.raw),
                          capped=guarded.capped)
    visualize.save_genotype_pictures(genotype, workdir, title='derived genotype')
    with open(os.path.join(workdir, 'spec.json'), 'w') as f:
        f.write(spec.to_json())
    print(f'derived genotype: {genotype}', flush=True)
    return genotype


def main(argv):
    del argv
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError('--config and --workdir are required')
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
    enable_compilation_cache()

    def request_stop(signum, frame):  # finish the current step, save, exit (loop.run_epoch checks it)
        del frame
        if loop.STOP['signal'] is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        loop.STOP['signal'] = signal.Signals(signum).name
        print(f'{loop.STOP["signal"]}: finishing the current step, then saving a checkpoint...', flush=True)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        with config_lib.exit_on_user_error():
            run(_CONFIG.value, _WORKDIR.value)
    except loop.Interrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(128 + getattr(signal, loop.STOP['signal'] or 'SIGTERM'))


if __name__ == '__main__':
    app.run(main)
