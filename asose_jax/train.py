"""Entry point: `python -m asose_jax.train --config configs/cifar10.py[:smoke] --workdir DIR`.

`--config.x=y` overrides any field. Everything is validated before data is read or code compiles.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from asose_jax import config as config_lib
from asose_jax import data as data_lib
from asose_jax import monitor, phases, stability, visualize
from asose_jax.network import count_params, init_search_variables
from asose_jax.train_state import create_train_state

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cifar10.py:smoke.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (metrics, genotypes).')


def enable_compilation_cache(path: str | None = None) -> None:
    """Persistent XLA cache: a second run of the same shapes skips compilation."""
    path = path or os.environ.get('ASOSE_JAX_CACHE', os.path.expanduser('~/.cache/asose_jax/xla'))
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@contextlib.contextmanager
def fast_compile(enabled: bool):
    """When enabled, the enclosed steps compile with most XLA optimisations off (restored after)."""
    before = jax.config.jax_disable_most_optimizations
    jax.config.update('jax_disable_most_optimizations', before or enabled)
    try:
        yield
    finally:
        jax.config.update('jax_disable_most_optimizations', before)


def load_splits(c: ml_collections.ConfigDict) -> dict:
    ds = data_lib.load(c.data)
    if len(ds.test_labels) == 0:
        raise data_lib.DataError('the evaluation split is empty')
    w_idx, a_idx = data_lib.split_indices(len(ds.train_labels), c.data.train_portion, c.data.split_seed)
    for name, idx in (('weight', w_idx), ('arch', a_idx)):
        if len(idx) < c.search.batch_size:
            raise data_lib.DataError(f'the {name} half has {len(idx)} images, fewer than '
                                     f'search.batch_size={c.search.batch_size}')
    return {
        'weights': data_lib.DeviceSplit.from_numpy(ds.train_images[w_idx], ds.train_labels[w_idx]),
        'arch': data_lib.DeviceSplit.from_numpy(ds.train_images[a_idx], ds.train_labels[a_idx]),
        'train': data_lib.DeviceSplit.from_numpy(ds.train_images, ds.train_labels),
        'eval': data_lib.DeviceSplit.from_numpy(ds.test_images, ds.test_labels),
    }


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs warmup -> search (growing between epochs if configured) -> optimize; returns the summary."""
    config_lib.validate(c)
    splits = load_splits(c)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(c.to_json_best_effort(indent=1))
    t_start = time.time()
    keys = phases.key_streams(c.seed)
    ctx = phases.RunContext(c, workdir, splits['weights'], splits['arch'], splits['train'], splits['eval'],
                            keys, monitor.MetricsWriter(workdir))
    spec = config_lib.network_spec(c)
    variables = init_search_variables(spec, keys['init'], splits['train'].images.shape[1], c.model.depthwise_impl)
    print(f'search network: {count_params(variables["params"]["weights"]):,} weights, '
          f'{count_params(variables["params"]["arch"])} arch logits', flush=True)
    state = create_train_state(variables, *phases.search_txs(c, splits['weights'].num_batches(c.search.batch_size)))
    with fast_compile(c.search.fast_compile):
        spec, state = phases.search_phase(ctx, 'warmup', spec, state, c.search.warmup_epochs)
        spec, state = phases.search_phase(ctx, 'search', spec, state, c.search.search_epochs)
    guarded = stability.guarded_genotype(jax.device_get(state.params['arch']),
                                         stability.MonitorConfig.from_config(c.monitor), spec.steps,
                                         spec.multiplier, spec.primitives)
    genotype = guarded.genotype  # the DARTS derivation, skip-capped when monitor.collapse_remedy='cap_skip'
    monitor.save_genotype(os.path.join(workdir, 'genotype.json'), genotype, raw_genotype=str(guarded.raw),
                          capped=guarded.capped)
    visualize.save_genotype_pictures(genotype, workdir, title='derived genotype')
    with open(os.path.join(workdir, 'spec.json'), 'w') as f:
        f.write(spec.to_json())
    print(f'derived genotype: {genotype}', flush=True)
    _, final = phases.optimize_phase(ctx, genotype, spec)
    summary = {'genotype': str(genotype), 'val_acc': final.get('val_acc', float('nan')),
               'wall_s': time.time() - t_start}
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    ctx.writer.close()
    print(f"done in {summary['wall_s']:.0f}s: val_acc {summary['val_acc']:.4f}", flush=True)
    return summary


def main(argv):
    del argv
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError('--config and --workdir are required')
    enable_compilation_cache()
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
    app.run(main)
