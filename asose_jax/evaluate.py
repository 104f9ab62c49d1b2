"""Train a found (or published) architecture from scratch, count it, export it.

`python -m asose_jax.evaluate --config configs/eval_cifar10.py[:smoke] --genotype PATH_OR_NAME --workdir DIR`

Training is `run.retrain.train_fixed`, the loop the search run's optimize phase uses too. Outputs in the workdir: `config.json`,
`genotype.json`, `genotype.{png,svg}`, `metrics.jsonl` (one line per epoch), `summary.json`
(test accuracy, params, MACs) and `export/` (an orbax checkpoint of the trained variables plus
the genotype and network hyper-parameters; `load_exported` restores it).
"""
from __future__ import annotations

import json
import os
import time

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags

from asose_jax.benchmarks import nats_bench
from asose_jax.data import cifar as data_lib
from asose_jax.report import monitor, visualize
from asose_jax.run import context
from asose_jax.run import config as config_lib
from asose_jax.run.retrain import FixedTrainConfig, check_auxiliary, init_variables, state_variables, train_fixed
from asose_jax.search import compilation
from asose_jax.space import complexity
from asose_jax.space.genotype import Genotype, genotype_from_dict, load_genotype
from asose_jax.space.nb201_genotype import NB201Genotype

EXPORT_FORMAT = 1


def export(path: str, genotype: Genotype | NB201Genotype, cfg: FixedTrainConfig, variables: dict, image_size: int) -> str:
    """One orbax checkpoint: the trained variables and, as JSON, the genotype and network settings."""
    path = os.path.abspath(path)
    meta = {'format': EXPORT_FORMAT, 'genotype': genotype.to_dict(), 'image_size': image_size,
            'network': {'C': cfg.C, 'layers': cfg.layers, 'num_classes': cfg.num_classes,
                        'stem_multiplier': cfg.stem_multiplier, 'auxiliary': cfg.auxiliary, 'space': cfg.space}}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
    return path


def load_exported(path: str, depthwise_impl: str = 'conv') -> tuple[nn.Module, dict, Genotype | NB201Genotype]:
    """Restores an `export`ed network: (model for inference, variables, genotype).

    `model.apply(variables, x, train=False)` returns (logits, None)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f'no exported network at {path}')
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        meta = ckptr.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
        if meta.get('format') != EXPORT_FORMAT:
            raise ValueError(f'{path}: export format {meta.get("format")!r}, expected {EXPORT_FORMAT}')
        genotype = genotype_from_dict(meta['genotype'])
        model = FixedTrainConfig(**meta['network'], depthwise_impl=depthwise_impl).model(genotype)
        # shapes depend on the image size only through the auxiliary head's classifier
        abstract = jax.eval_shape(lambda k: init_variables(model, k, meta['image_size']), jax.random.key(0))
        variables = ckptr.restore(path, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract)))['variables']
    return model, variables, genotype


def run_evaluation(c: ml_collections.ConfigDict, genotype_arg: str, workdir: str) -> dict:
    """Loads the genotype and data, trains from scratch, writes metrics, summary, pictures and the export."""
    try:  # a bad argument fails before anything is loaded, as one line naming what is wrong
        genotype = load_genotype(genotype_arg)
    except ValueError as e:
        raise config_lib.ConfigError(f'--genotype: {e}') from None
    config_lib.validate(c)
    cfg = FixedTrainConfig.from_config(c, data_lib.DATASETS[c.data.dataset])
    check_auxiliary(cfg, c.data.image_size)
    ds = data_lib.load(c.data)
    if len(ds.test_labels) == 0:
        raise data_lib.DataError('the evaluation split is empty')
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(c.to_json_best_effort(indent=1))
    monitor.save_genotype(os.path.join(workdir, 'genotype.json'), genotype, source=genotype_arg)
    visualize.save_genotype_pictures(genotype, workdir, title=os.path.basename(genotype_arg)[:60])
    cost = complexity.model_complexity(cfg.model(genotype, depthwise_impl='conv'), c.data.image_size)
    print(f'{genotype}\nparams {cost["params"] / 1e6:.3f}M (+{cost["params_aux"] / 1e6:.3f}M auxiliary head), '
          f'{cost["macs"] / 1e6:.1f}M MACs at {c.data.image_size}x{c.data.image_size}', flush=True)
    t_start = time.time()
    train = data_lib.DeviceSplit.from_numpy(ds.train_images, ds.train_labels)
    test = data_lib.DeviceSplit.from_numpy(ds.test_images, ds.test_labels)
    ctx = context.RunContext(c, workdir, train, train, train, test, context.key_streams(c.seed),
                            monitor.MetricsWriter(workdir))
    _, state, final = train_fixed(ctx, genotype, cfg, phase='evaluate')
    export_path = export(os.path.join(workdir, 'export'), genotype, cfg, state_variables(state),
                         c.data.image_size)
    summary = {'genotype': str(genotype), 'genotype_arg': genotype_arg,
               'test_acc': final.get('val_acc', float('nan')), 'test_loss': final.get('val_loss', float('nan')),
               'epochs': cfg.epochs, 'image_size': c.data.image_size, **cost,
               'train_s': time.time() - t_start, 'export': export_path, **nats_bench.summary_fields(genotype)}
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
        json.dump(monitor._plain(summary), f, indent=1)
    print(f"test accuracy {summary['test_acc']:.4f} after {cfg.epochs} epochs ({summary['train_s']:.0f}s); "
          f'exported to {export_path}', flush=True)
    return summary


def _define_flags() -> dict:
    """CLI flags, defined only when run as a program (tests import this module next to
    asose_jax.train, which defines its own --config/--workdir)."""
    return {
        'config': config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/eval_cifar10.py:smoke.',
                                                  lock_config=True),
        'genotype': flags.DEFINE_string('genotype', None, 'A published name (e.g. DARTS_V2), a genotype JSON file '
                                        "(a search workdir's genotype.json) or a Genotype(...) string."),
        'workdir': flags.DEFINE_string('workdir', None, 'Output folder.'),
    }


def main(flag_values: dict) -> None:
    c, genotype, workdir = (flag_values[k].value for k in ('config', 'genotype', 'workdir'))
    if c is None or not workdir or not genotype:
        raise app.UsageError('--config, --genotype and --workdir are required')
    compilation.enable_compilation_cache()
    with config_lib.exit_on_user_error():
        run_evaluation(c, genotype, workdir)


if __name__ == '__main__':
    _flags = _define_flags()
    app.run(lambda argv: main(_flags))
