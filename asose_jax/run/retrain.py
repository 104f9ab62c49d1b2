"""The from-scratch training of a fixed architecture: the search run's optimize phase and the
`asose_jax.evaluate` CLI both train through `train_fixed`, on the phase loop of run/loop.py."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from asose_jax.report import monitor
from asose_jax.run import config as config_lib
from asose_jax.run.context import RunContext
from asose_jax.run.loop import PhasePlan, PhaseRun, run_phase, set_hparams
from asose_jax.search import compilation, parallel
from asose_jax.search.optim import WeightOptConfig, arch_transform, weight_transform
from asose_jax.search.steps import make_fixed_steps
from asose_jax.search.train_state import TrainState, create_train_state
from asose_jax.space.genotype import Genotype
from asose_jax.space.nb201_genotype import NB201Genotype
from asose_jax.space.nb201_network import NB201FixedNetwork
from asose_jax.space.network import FixedNetwork, count_params
from asose_jax.space.spec import NetworkSpec


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


def fixed_state(ctx: RunContext, model: FixedNetwork, cfg: FixedTrainConfig, materialise: bool = True):
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


class RetrainKind:
    """The retrain's end of an epoch (loop.PhaseKind): write the record and keep it (the summary's),
    no monitor; its checkpoints' meta hold the genotype, the last record and the search spec."""

    def __init__(self, genotype: Genotype, spec: NetworkSpec | None, n_params: int, epochs: int,
                 writer: monitor.MetricsWriter, record: dict):
        self.genotype, self.spec, self.n_params, self.epochs, self.writer = genotype, spec, n_params, epochs, writer
        self.record = record

    def hparams(self, state: TrainState, knobs: dict) -> TrainState:
        return set_hparams(state, knobs, 0.0)  # only the lr scale: the retrain has no arch logits

    def record_fields(self, run: PhaseRun) -> dict:
        return {'params': self.n_params}

    def meta(self, run: PhaseRun) -> dict:
        return {'spec': self.spec.to_dict() if self.spec else None, 'genotype': self.genotype.to_dict(),
                'record': self.record}

    def end_epoch(self, run: PhaseRun, record: dict) -> bool:
        self.record = monitor._plain(record)
        self.writer.write(record)
        print(f"[{record['phase']} {record['epoch'] + 1}/{self.epochs}] loss {record['loss']:.3f} "
              f"acc {record['acc']:.3f} val_acc {record['val_acc']:.3f} {record['images_per_sec']:.1f} img/s",
              flush=True)
        return False


def train_fixed(ctx: RunContext, genotype: Genotype, cfg: FixedTrainConfig, phase: str = 'optimize',
                resume: tuple[dict, TrainState] | None = None,
                spec: NetworkSpec | None = None) -> tuple[FixedNetwork, TrainState, dict]:
    """Trains a fresh network of `genotype` (or `resume` = (meta, state) of a checkpoint) on
    ctx.train_split as a phase of the one loop: evaluated on ctx.eval_split after every epoch, one
    metrics line per epoch, checkpoints with ctx.ckpt, NaN rollback. Returns (model, state, last record)."""
    check_auxiliary(cfg, int(ctx.train_split.images.shape[1]))
    model = cfg.model(genotype)
    n_batches = ctx.train_split.num_batches(cfg.batch_size)
    meta = resume[0] if resume else {}
    knobs = {'lr_scale': 1.0, **meta.get('knobs', {})}

    def weight_tx(hp):  # the lr scale is the state's (a NaN rollback halves it without a recompile)
        return fixed_weight_transform(cfg, n_batches, hp['lr_scale'])

    state = resume[1] if resume else fixed_state(ctx, model, cfg)
    steps, state = parallel.maybe_parallel(ctx.config, make_fixed_steps(model, weight_tx, cfg.cutout, cfg.aux_weight),
                                           set_hparams(state, knobs, 0.0))
    kind = RetrainKind(genotype, spec, count_params(state.params['weights']), cfg.epochs, ctx.writer,
                       meta.get('record', {}))
    plan = PhasePlan(phase, cfg.epochs, ctx.train_split, cfg.batch_size, ctx.keys['data_optimize'], ctx.keys['optimize'])
    run = run_phase(ctx, plan, kind, PhaseRun(spec, state, steps, knobs, epoch=meta.get('epoch', 0),
                                              batch=meta.get('batch', 0), partial=meta.get('partial')))
    return model, run.state, kind.record


def state_variables(state: TrainState) -> dict:
    """The FixedNetwork variables held by a TrainState."""
    return {'params': state.params['weights'], 'batch_stats': state.batch_stats}


def optimize_phase(ctx: RunContext, genotype: Genotype, spec: NetworkSpec,
                   resume: tuple[dict, TrainState] | None = None) -> tuple[TrainState, dict]:
    """The search run's last phase: a freshly initialised network of the derived `genotype`, sized
    from the (possibly grown) `spec`, trained on the whole training set by `train_fixed`."""
    cfg = FixedTrainConfig.from_config(ctx.config, spec.num_classes, spec)
    _, state, record = train_fixed(ctx, genotype, cfg, phase='optimize', resume=resume, spec=spec)
    return state, record
