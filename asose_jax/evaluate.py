"""Train a found (or published) architecture from scratch, count it, export it.

`python -m asose_jax.evaluate --config configs/eval_cifar10.py[:smoke] --genotype PATH_OR_NAME --workdir DIR`

`train_fixed` is the one FixedNetwork training loop: the search run's optimize phase
(`phases.optimize_phase`) and this CLI both call it. Outputs in the workdir: `config.json`,
`genotype.json`, `genotype.{png,svg}`, `metrics.jsonl` (one line per epoch), `summary.json`
(test accuracy, params, MACs) and `export/` (an orbax checkpoint of the trained variables plus
the genotype and network hyper-parameters; `load_exported` restores it).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags

from asose_jax import compilation, complexity, monitor, nats_bench, parallel, phases, visualize
from asose_jax import config as config_lib
from asose_jax import data as data_lib
from asose_jax.genotype import Genotype, genotype_from_dict, load_genotype
from asose_jax.nb201_genotype import NB201Genotype
from asose_jax.nb201_network import NB201FixedNetwork
from asose_jax.network import FixedNetwork, count_params
from asose_jax.spec import NetworkSpec
from asose_jax.optim import WeightOptConfig, arch_transform, weight_transform
from asose_jax.steps import make_fixed_steps
from asose_jax.train_state import TrainState, create_train_state, with_hparams

EXPORT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class FixedTrainConfig:
    """Network and optimisation settings of one from-scratch training (the config's `optimize` section)."""

    C: int
    layers: int
    num_classes: int = 10
    stem_multiplier: int = 3
    auxiliary: bool = False
    aux_weight: float = 0.4
    drop_path: float = 0.0
    depthwise_impl: str = 'conv'
    epochs: int = 1
    batch_size: int = 96
    eval_batch_size: int = 256
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int = 16
    space: str = 'darts'  # 'nb201': NB201FixedNetwork(genotype, C, cells_per_stage=layers)

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict, num_classes: int,
                    spec: NetworkSpec | None = None) -> 'FixedTrainConfig':
        """optimize.C / optimize.layers of 0 mean the searched network's: the (possibly grown) spec's
        cell count and the widest stage's channels per DARTS doubling (FixedNetwork is uniform)."""
        o = c.optimize
        nb201 = c.model.space == 'nb201'
        base_C, layers = c.model.C, c.model.cells_per_stage if nb201 else c.model.layers
        if spec is not None:
            base_C = max(2 * ((cell.C // 2 ** level + 1) // 2) for cell, level in zip(spec.cells, spec.levels))
            layers = sum(not cell.reduction for cell in spec.cells) // 3 if nb201 else spec.layers
        return cls(C=o.C or base_C, layers=o.layers or layers, num_classes=num_classes,
                   stem_multiplier=c.model.stem_multiplier, auxiliary=o.auxiliary, aux_weight=o.aux_weight,
                   drop_path=o.drop_path, depthwise_impl=o.depthwise_impl, epochs=o.epochs,
                   batch_size=o.batch_size, eval_batch_size=c.data.eval_batch_size, lr=o.lr, lr_min=o.lr_min,
                   momentum=o.momentum, weight_decay=o.weight_decay, grad_clip=o.grad_clip, cutout=o.cutout,
                   space=c.model.space)

    def weight_opt_config(self) -> WeightOptConfig:
        """SGD settings (a NaN rollback scales the lr through the state's hparams)."""
        return WeightOptConfig(lr=self.lr, lr_min=self.lr_min, momentum=self.momentum,
                               weight_decay=self.weight_decay, grad_clip=self.grad_clip)

    def model(self, genotype, drop_path: float | None = None, depthwise_impl: str | None = None) -> nn.Module:
        """The network of `genotype` in this config's space (both return (logits, aux or None))."""
        if isinstance(genotype, NB201Genotype) != (self.space == 'nb201'):
            raise config_lib.ConfigError(
                f'genotype {genotype} does not belong to model.space={self.space!r}: NAS-Bench-201 arch strings '
                'train with --config configs/nb201.py (or :smoke), DARTS genotypes with configs/eval_cifar10.py')
        if self.space == 'nb201':
            return NB201FixedNetwork(genotype, C=self.C, cells_per_stage=self.layers, num_classes=self.num_classes,
                                     drop_path_rate=self.drop_path if drop_path is None else drop_path,
                                     depthwise_impl=depthwise_impl or self.depthwise_impl)
        return FixedNetwork(genotype, C=self.C, layers=self.layers, num_classes=self.num_classes,
                            stem_multiplier=self.stem_multiplier, auxiliary=self.auxiliary,
                            drop_path_rate=self.drop_path if drop_path is None else drop_path,
                            depthwise_impl=depthwise_impl or self.depthwise_impl)


def check_auxiliary(cfg: FixedTrainConfig, image_size: int) -> None:
    """DARTS' auxiliary head pools a feature map of >= 8x8 (image/4): CIFAR-sized inputs only."""
    if cfg.auxiliary and image_size // 4 < 8:
        raise config_lib.ConfigError(
            f'config.optimize.auxiliary=True needs data.image_size >= 32 (the head pools the image/4 '
            f'feature map with a 5x5 window), got {image_size}; set config.optimize.auxiliary=False')


def init_variables(model: FixedNetwork, key, image_size: int) -> dict:
    """Train-mode init so that the auxiliary head's parameters exist too."""
    x = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
    return model.init({'params': key, 'dropout': key}, x, train=True)


def fixed_weight_transform(cfg: FixedTrainConfig, n_batches: int, lr_scale=1.0):
    """The retrain's SGD: one cosine over all its epochs, the lr times `lr_scale` (traced in the steps)."""
    return weight_transform(cfg.weight_opt_config(), max(cfg.epochs * n_batches, 1), lr_scale)


def fixed_state(ctx: phases.RunContext, model: FixedNetwork, cfg: FixedTrainConfig, materialise: bool = True):
    """The TrainState train_fixed starts from: initialised (jitted init), or its shapes only
    (materialise=False: the abstract state a checkpoint restores into)."""
    size = int(ctx.train_split.images.shape[1])
    weight_tx = fixed_weight_transform(cfg, ctx.train_split.num_batches(cfg.batch_size))
    arch_tx = arch_transform(config_lib.arch_opt_config(ctx.config))

    def state_of(variables):
        return create_train_state({'params': {'weights': variables['params'], 'arch': {}},
                                   'batch_stats': variables.get('batch_stats', {})}, weight_tx, arch_tx)
    if not materialise:
        return jax.eval_shape(lambda k: state_of(init_variables(model, k, size)), ctx.keys['optimize_init'])
    init = compilation.rarely_run(jax.jit(lambda k: init_variables(model, k, size)))
    return state_of(init(ctx.keys['optimize_init']))


def train_fixed(ctx: phases.RunContext, genotype: Genotype, cfg: FixedTrainConfig, phase: str = 'optimize',
                resume: tuple[dict, TrainState] | None = None,
                spec: NetworkSpec | None = None) -> tuple[FixedNetwork, TrainState, dict]:
    """The FixedNetwork training loop: a fresh network (or `resume` = (meta, state) of a checkpoint)
    trained on ctx.train_split, evaluated on ctx.eval_split after every epoch, one metrics line per
    epoch. With ctx.ckpt: a checkpoint at every epoch end and on a stop signal (meta holds `spec`,
    the search network it came from). Non-finite metrics: phases.NanGuard (restore the epoch start,
    halve the lr, bounded retries). Returns (model, state, last record)."""
    check_auxiliary(cfg, int(ctx.train_split.images.shape[1]))
    model = cfg.model(genotype)
    n_batches = ctx.train_split.num_batches(cfg.batch_size)
    meta = resume[0] if resume else {}
    knobs = {'lr_scale': 1.0, **meta.get('knobs', {})}
    epoch, skip, record = meta.get('epoch', 0), meta.get('batch', 0), meta.get('record', {})

    def weight_tx(hp):  # the lr scale is the state's (a NaN rollback halves it without a recompile)
        return fixed_weight_transform(cfg, n_batches, hp['lr_scale'])

    state = resume[1] if resume else fixed_state(ctx, model, cfg)
    steps, state = parallel.maybe_parallel(ctx.config, make_fixed_steps(model, weight_tx, cfg.cutout, cfg.aux_weight),
                                           with_hparams(state, lr_scale=knobs['lr_scale']))
    n_params = count_params(state.params['weights'])
    nan_guard = phases.NanGuard(ctx, phase)

    def save(next_epoch: int, batch: int = 0, val_acc=None, partial=None) -> None:
        if ctx.ckpt is not None:
            ctx.ckpt.save(state, {'phase': phase, 'epoch': next_epoch, 'batch': batch,
                                  'spec': spec.to_dict() if spec else None, 'genotype': genotype.to_dict(),
                                  'knobs': knobs, 'partial': partial, 'record': record,
                                  'metrics_lines': len(ctx.writer.read()),
                                  'config': json.loads(ctx.config.to_json_best_effort())}, val_acc)

    while epoch < cfg.epochs:
        nan_guard.remember(state)
        data_key = jax.random.fold_in(ctx.keys['data_optimize'], int(state.step) - skip)
        state, train_m, ips, first_s, done = phases.run_epoch(
            ctx, steps, state, ctx.train_split.epoch_batches(data_key, cfg.batch_size), n_batches,
            f'{phase} {epoch + 1}/{cfg.epochs}', ctx.keys['optimize'], phase=phase, skip=skip,
            partial=meta.get('partial') if skip else None)
        if done < n_batches:
            save(epoch, done, partial=train_m)
            raise phases.Interrupted(phases.stop_message(ctx.workdir))
        skip = 0
        new = {'phase': phase, 'epoch': epoch, 'step': int(state.step), 'images_per_sec': ips,
               'first_step_s': first_s, 'params': n_params, **train_m,
               **phases.evaluate(steps, state, ctx.eval_split, cfg.eval_batch_size)}
        retry = nan_guard.check(epoch, new, knobs)
        if retry is not None:
            state = parallel.maybe_replicate(ctx.config, with_hparams(retry, lr_scale=knobs['lr_scale']))
            continue
        record = monitor._plain(new)
        ctx.writer.write(new)
        print(f"[{phase} {epoch + 1}/{cfg.epochs}] loss {new['loss']:.3f} acc {new['acc']:.3f} "
              f"val_acc {new['val_acc']:.3f} {ips:.1f} img/s", flush=True)
        epoch += 1
        save(epoch, val_acc=new['val_acc'])
    return model, state, record


def state_variables(state: TrainState) -> dict:
    """The FixedNetwork variables held by a TrainState."""
    return {'params': state.params['weights'], 'batch_stats': state.batch_stats}


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
    ctx = phases.RunContext(c, workdir, train, train, train, test, phases.key_streams(c.seed),
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
    """CLI flags, defined only when run as a program: phases imports this module inside a run of
    asose_jax.train, which defines its own --config/--workdir."""
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
