"""The weight and arch optimisers: two multi_transforms over one label scheme, separate states.

A single `multi_transform({'weights': sgd, 'arch': adam})` would run Adam on zero arch gradients
during weight steps (moving the logits by momentum and bumping its count); two transforms, each
zeroing the other group, keep the groups isolated.
"""
from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class WeightOptConfig:
    """DARTS search defaults: SGD 0.025 cosine to 1e-3, momentum 0.9, wd 3e-4, clip 5."""

    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0


@dataclasses.dataclass(frozen=True)
class ArchOptConfig:
    """DARTS arch defaults: Adam 3e-4, betas (0.5, 0.999), L2 weight decay 1e-3."""

    lr: float = 3e-4
    b1: float = 0.5
    b2: float = 0.999
    weight_decay: float = 1e-3


def labels(params: dict) -> dict:
    """'weights' for every leaf under params['weights'], 'arch' for params['arch']."""
    unknown = set(params) - {'weights', 'arch'}
    if unknown:
        raise ValueError(f'params has top-level keys {sorted(unknown)} with no optimizer label')
    return {k: jax.tree_util.tree_map(lambda _, k=k: k, v) for k, v in params.items()}


def weight_schedule(cfg: WeightOptConfig, total_steps: int):
    """Cosine from lr to lr_min over total_steps (per step; DARTS steps it per epoch)."""
    return optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1), alpha=cfg.lr_min / cfg.lr)


def weight_transform(cfg: WeightOptConfig, total_steps: int, lr_scale: float = 1.0):
    """torch-ordered SGD: clip the gradient norm, add L2 decay, momentum trace, scheduled lr."""
    sched = weight_schedule(cfg, total_steps)
    sgd = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(lambda step: lr_scale * sched(step), momentum=cfg.momentum),
    )
    return optax.multi_transform({'weights': sgd, 'arch': optax.set_to_zero()}, labels)


def arch_transform(cfg: ArchOptConfig, lr_scale: float = 1.0):
    """torch-style Adam with L2 weight decay added to the gradient (not decoupled)."""
    adam = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.adam(lr_scale * cfg.lr, b1=cfg.b1, b2=cfg.b2, eps=1e-8))
    return optax.multi_transform({'weights': optax.set_to_zero(), 'arch': adam}, labels)


def hparam_transforms(weight_cfg: WeightOptConfig, arch_cfg: ArchOptConfig, total_steps: int) -> tuple:
    """(weight, arch) transforms as functions of a TrainState's `hparams` (train_state.HPARAMS): the weight
    lr, arch lr and arch weight decay times their scales. The steps build them inside the trace
    (steps.transform_for), so changing a scale compiles nothing; the state layout is that of
    weight_transform / arch_transform."""

    def weight(hp: dict) -> optax.GradientTransformation:
        return weight_transform(weight_cfg, total_steps, hp['lr_scale'])

    def arch(hp: dict) -> optax.GradientTransformation:
        cfg = dataclasses.replace(arch_cfg, weight_decay=arch_cfg.weight_decay * hp['arch_wd_scale'])
        return arch_transform(cfg, hp['arch_lr_scale'])
    return weight, arch
