"""Jitted steps, each `(state, batch, key) -> (state, metrics)`, compiled once per (spec, phase).

`key` is a named stream; every step folds in `state.step`, so results depend only on
(stream, step) and a resumed run draws the same noise. Train steps donate the state.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from asose_jax.data.cifar import augment, normalize
from asose_jax.search import gumbel
from asose_jax.search.compilation import rarely_run
from asose_jax.search.train_state import TrainState
from asose_jax.space.network import FixedNetwork, search_network
from asose_jax.space.ops import POINTWISE_IMPLS, pointwise
from asose_jax.space.spec import NetworkSpec

@dataclasses.dataclass(frozen=True)
class SearchStepConfig:
    """Static settings of one phase's search steps (part of the compile key).

    sampling: 'gumbel' draws edge weights from the logits; 'softmax' takes softmax(logits), no noise
      (DARTS; `hard`/`single_path` do not apply); 'dirichlet' draws the mixture from a Dirichlet whose
      concentration is elu(logits) + 1 (DrNAS; reparameterised, so the arch gradient flows through the
      sample); 'uniform' ignores them (warmup): the exact 1/K
      mixture when soft, a uniformly drawn single op per edge when hard.
    beta_reg: weight of beta-decay regularisation (beta-DARTS) in the arch loss, the mean over edges
      of logsumexp(logits), ramped linearly from 0 at the schedule's start to this at `tau_steps`.
    hard: straight-through one-hot samples; single_path: evaluate only the sampled op per edge.
    unrolled: second-order arch gradient through one virtual SGD step of lr `unrolled_lr`.
    eval_mode: 'softmax' (DARTS mixture) or 'argmax' (the derived op per edge, single path).
    """

    sampling: str = 'gumbel'
    hard: bool = True
    single_path: bool = True
    tau_max: float = 10.0
    tau_min: float = 0.1
    tau_schedule: str = 'exponential'
    tau_steps: int = 1000
    tau_start: int = 0              # the step the schedule starts at (the search phase follows warmup)
    cutout: int = 0
    unrolled: bool = False
    unrolled_lr: float = 0.025
    unrolled_wd: float = 3e-4
    eval_mode: str = 'argmax'
    depthwise_impl: str = 'conv'
    pointwise_impl: str = 'conv'    # 'dot': 1x1 convs as matmuls (ops.pointwise; faster vmapped sweeps on GPU)
    compute_dtype: str = 'float32'  # 'bfloat16': params, edge weights, activations cast inside the step
    remat: bool = False             # nn.remat per cell
    remat_branch: bool = False      # nn.remat per candidate op (cells.MixedOp)
    unroll_edges: bool = False      # unroll the cells' edge scans (cells.SearchCell)
    materialize_edge_grads: bool = False  # cells.materialized_cotangent on each edge's input
    beta_reg: float = 0.0


COMPUTE_DTYPES = ('float32', 'bfloat16')


def cast_floating(tree, dtype):
    """Casts the floating leaves of `tree` (fp32 master copies stay outside; grads flow back in fp32)."""
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


@dataclasses.dataclass(frozen=True)
class Steps:
    weight_step: Callable
    arch_step: Callable | None
    eval_step: Callable
    traces: dict  # python-side trace counters, to prove one compile per phase
    eval_jit: Callable | None = None  # the jitted (state, batch) -> metrics inside eval_step (parallel.py re-jits it)


def cross_entropy(logits, labels, mask=None):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if mask is None:
        return losses.mean(), correct.mean()
    m = mask.astype(jnp.float32)
    return (losses * m).sum() / jnp.maximum(m.sum(), 1.0), (correct * m).sum() / jnp.maximum(m.sum(), 1.0)


def edge_weights(cfg: SearchStepConfig, arch: dict, key, step, tau_scale=1.0):
    """Edge weights for a train step and the temperature used (the schedule's, times `tau_scale`)."""
    tau = tau_scale * gumbel.temperature(step - cfg.tau_start, cfg.tau_steps, cfg.tau_max, cfg.tau_min,
                                         cfg.tau_schedule)
    if cfg.sampling == 'softmax':
        return {t: jax.nn.softmax(a, -1) for t, a in arch.items()}, tau
    if cfg.sampling == 'dirichlet':
        names = sorted(arch)
        keys = dict(zip(names, jax.random.split(key, len(names))))
        return {t: jax.random.dirichlet(keys[t], dirichlet_concentration(a)) for t, a in arch.items()}, tau
    if cfg.sampling == 'uniform':
        zeros = {t: jnp.zeros_like(a) for t, a in arch.items()}
        if not cfg.hard:
            return {t: jax.nn.softmax(z, -1) for t, z in zeros.items()}, tau
        return gumbel.sample_tree(key, zeros, 1.0, hard=True), tau
    return gumbel.sample_tree(key, arch, tau, cfg.hard), tau


def dirichlet_concentration(logits):
    """DrNAS' concentration elu(logits) + 1: positive, 1 (uniform) at logits 0, monotone in the logits."""
    return jax.nn.elu(logits) + 1.0


def eval_edge_weights(cfg: SearchStepConfig, arch: dict):
    """'argmax': the derived op per edge; 'softmax': the expected mixture of the sampling in use
    (softmax of the logits, or the Dirichlet's mean)."""
    if cfg.eval_mode == 'argmax':
        return {t: jax.nn.one_hot(jnp.argmax(a, -1), a.shape[-1]) for t, a in arch.items()}
    if cfg.sampling == 'dirichlet':
        return {t: dirichlet_concentration(a) / dirichlet_concentration(a).sum(-1, keepdims=True)
                for t, a in arch.items()}
    return {t: jax.nn.softmax(a, -1) for t, a in arch.items()}


def beta_penalty(cfg: SearchStepConfig, arch: dict, step):
    """beta-DARTS' beta-decay: lambda(step) * mean over edges of logsumexp(logits). It pulls the logits'
    softmax-weighted mean down, so no op's weight runs away while the weights still train; lambda
    ramps linearly over the search so the early, uninformed steps are barely held."""
    if cfg.beta_reg == 0.0:
        return 0.0
    frac = jnp.clip((step - cfg.tau_start).astype(jnp.float32) / max(cfg.tau_steps, 1), 0.0, 1.0)
    return cfg.beta_reg * frac * jnp.mean(jnp.stack([jax.nn.logsumexp(a, -1).mean() for a in arch.values()]))


def transform_for(tx, hparams: dict) -> optax.GradientTransformation:
    """`tx` itself, or `tx(hparams)` when it is a function of the state's runtime hyper-parameters
    (optim.hparam_transforms): built inside the step, so new values are new inputs, not a recompile."""
    return tx if isinstance(tx, optax.GradientTransformation) else tx(hparams)


def _counted(fn, traces: dict, name: str, network: str):
    """`fn` counting its traces in `traces[name]`; named `<network>_<name>`, so that its program is
    `jit_search_weight_step` etc. in XLA dumps, profiles and the compilation cache's log."""
    def counted(*args):
        traces[name] = traces.get(name, 0) + 1
        return fn(*args)
    counted.__name__ = counted.__qualname__ = f'{network}_{name}'
    return counted


@dataclasses.dataclass(frozen=True)
class _SearchModel:
    """What the search steps apply: the network, the step config and whether a train pass draws dropout /
    drop-path noise (growth's regularise). Frozen, so the jitted steps close over nothing mutable."""
    network: nn.Module
    cfg: SearchStepConfig
    stochastic: bool

    def apply(self, *args, **kwargs):
        with pointwise(self.cfg.pointwise_impl):
            return self.network.apply(*args, **kwargs)


def _batch_loss(model: _SearchModel, weights, batch_stats, ew, x, y, drop_key):
    """Train-mode cross-entropy under edge weights `ew`, computed in cfg.compute_dtype; aux: accuracy and the
    updated BN statistics."""
    cfg = model.cfg
    dtype = jnp.dtype(cfg.compute_dtype)
    if dtype != jnp.float32:  # BN statistics stay fp32 (batch_stats are not cast)
        weights, ew, x = cast_floating((weights, ew, x), dtype)
    logits, upd = model.apply({'params': weights, 'batch_stats': batch_stats}, x, ew, train=True,
                              single_path=cfg.single_path, mutable=['batch_stats'],
                              rngs={'dropout': drop_key} if model.stochastic else None)
    logits = logits.astype(jnp.float32)
    loss, acc = cross_entropy(logits, y)
    return loss, (acc, upd['batch_stats'])


def _arch_loss(model: _SearchModel, arch, weights, batch_stats, key, step, x, y, tau_scale):
    """The batch loss as a function of the arch logits, plus the beta-decay penalty."""
    ew, _ = edge_weights(model.cfg, arch, key, step, tau_scale)
    loss, aux = _batch_loss(model, weights, batch_stats, ew, x, y, jax.random.fold_in(key, 1))
    return loss + beta_penalty(model.cfg, arch, step), aux


def _unrolled_arch_loss(model: _SearchModel, arch, weights, batch_stats, key, step, train_xy, val_xy, tau_scale):
    """DARTS' second-order arch loss: the validation loss after one virtual SGD step of the weights on the
    training batch, differentiable in `arch` through that step."""
    cfg = model.cfg
    g = jax.grad(lambda w_: _arch_loss(model, arch, w_, batch_stats, key, step, *train_xy, tau_scale)[0])(weights)
    w_virtual = jax.tree_util.tree_map(lambda p, gp: p - cfg.unrolled_lr * (gp + cfg.unrolled_wd * p), weights, g)
    return _arch_loss(model, arch, w_virtual, batch_stats, key, step, *val_xy, tau_scale)


def _weight_step(model: _SearchModel, weight_tx, state: TrainState, batch, key):
    cfg = model.cfg
    k_aug, k_gumbel = jax.random.split(jax.random.fold_in(key, state.step))
    x, y = augment(k_aug, batch['image'], cfg.cutout), batch['label']
    ew, tau = edge_weights(cfg, jax.lax.stop_gradient(state.params['arch']), k_gumbel, state.step,
                           state.hparams['tau_scale'])
    (loss, (acc, bs)), g_w = jax.value_and_grad(functools.partial(_batch_loss, model), has_aux=True)(
        state.params['weights'], state.batch_stats, ew, x, y, jax.random.fold_in(k_aug, 1))
    grads = {'weights': g_w, 'arch': jax.tree_util.tree_map(jnp.zeros_like, state.params['arch'])}
    updates, opt = transform_for(weight_tx, state.hparams).update(grads, state.weight_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=bs, weight_opt_state=opt)
    return new, {'loss': loss, 'acc': acc, 'tau': tau, 'grad_norm': optax.tree.norm(g_w)}


def _arch_step(model: _SearchModel, arch_tx, state: TrainState, batch, key):
    cfg = model.cfg
    k_aug, k_gumbel, k_aug2 = jax.random.split(jax.random.fold_in(key, state.step), 3)
    x, y = augment(k_aug, batch['image'], cfg.cutout), batch['label']
    w, bs, arch = state.params['weights'], state.batch_stats, state.params['arch']
    tau_scale = state.hparams['tau_scale']
    if cfg.unrolled:
        xy_train = augment(k_aug2, batch['train_image'], cfg.cutout), batch['train_label']
        (loss, (acc, new_bs)), g_a = jax.value_and_grad(functools.partial(_unrolled_arch_loss, model), has_aux=True)(
            arch, w, bs, k_gumbel, state.step, xy_train, (x, y), tau_scale)
    else:
        (loss, (acc, new_bs)), g_a = jax.value_and_grad(functools.partial(_arch_loss, model), has_aux=True)(
            arch, w, bs, k_gumbel, state.step, x, y, tau_scale)
    grads = {'weights': jax.tree_util.tree_map(jnp.zeros_like, w), 'arch': g_a}
    updates, opt = transform_for(arch_tx, state.hparams).update(grads, state.arch_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(params=params, batch_stats=new_bs, arch_opt_state=opt)
    return new, {'arch_loss': loss, 'arch_acc': acc, 'arch_grad_norm': optax.tree.norm(g_a)}


def _eval_metrics(model: _SearchModel, state: TrainState, batch):
    cfg = model.cfg
    ew = eval_edge_weights(cfg, state.params['arch'])
    logits = model.apply({'params': state.params['weights'], 'batch_stats': state.batch_stats},
                         normalize(batch['image']), ew, train=False, single_path=cfg.eval_mode == 'argmax')
    loss, acc = cross_entropy(logits, batch['label'], batch.get('mask'))
    return {'loss': loss, 'acc': acc, 'count': jnp.sum(batch['mask']) if 'mask' in batch else len(logits),
            'logits': logits}


def make_search_steps(spec: NetworkSpec, cfg: SearchStepConfig, weight_tx, arch_tx) -> Steps:
    """Builds the jitted weight/arch/eval steps of the search network for one phase. Each transform is a
    GradientTransformation or a function of `state.hparams` returning one (transform_for); the
    temperature is scaled by `state.hparams['tau_scale']`."""
    if cfg.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f'compute_dtype {cfg.compute_dtype!r}; allowed: {COMPUTE_DTYPES}')
    if cfg.pointwise_impl not in POINTWISE_IMPLS:
        raise ValueError(f'pointwise_impl {cfg.pointwise_impl!r}; allowed: {POINTWISE_IMPLS}')
    network = search_network(spec, cfg.depthwise_impl, remat=cfg.remat, remat_branch=cfg.remat_branch,
                             unroll_edges=cfg.unroll_edges, materialize_edge_grads=cfg.materialize_edge_grads)
    model = _SearchModel(network, cfg, stochastic=spec.dropout > 0 or spec.drop_path > 0)
    traces: dict = {}
    jit_eval = jax.jit(_counted(functools.partial(_eval_metrics, model), traces, 'eval_step', 'search'))
    run_eval = rarely_run(jit_eval)  # a few calls per epoch: an unoptimised compile pays off
    weight_step = functools.partial(_weight_step, model, weight_tx)
    arch_step = functools.partial(_arch_step, model, arch_tx)
    return Steps(
        weight_step=jax.jit(_counted(weight_step, traces, 'weight_step', 'search'), donate_argnums=0),
        arch_step=jax.jit(_counted(arch_step, traces, 'arch_step', 'search'), donate_argnums=0) if arch_tx else None,
        eval_step=lambda state, batch, key=None: (state, run_eval(state, batch)),
        traces=traces, eval_jit=jit_eval)


def make_fixed_steps(model: FixedNetwork, weight_tx, cutout: int, aux_weight: float = 0.4) -> Steps:
    """Train/eval steps of a derived FixedNetwork (params {'weights': ..., 'arch': {}}); `weight_tx` as in
    make_search_steps."""

    def loss_fn(weights, batch_stats, x, y, rng):
        (logits, aux), upd = model.apply({'params': weights, 'batch_stats': batch_stats}, x, train=True,
                                         rngs={'dropout': rng}, mutable=['batch_stats'])
        loss, acc = cross_entropy(logits, y)
        total = loss + (aux_weight * cross_entropy(aux, y)[0] if aux is not None else 0.0)
        return total, (loss, acc, upd['batch_stats'])

    def weight_step(state: TrainState, batch, key):
        k_aug, k_drop = jax.random.split(jax.random.fold_in(key, state.step))
        x = augment(k_aug, batch['image'], cutout)
        (_, (loss, acc, bs)), g = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params['weights'], state.batch_stats, x, batch['label'], k_drop)
        updates, opt = transform_for(weight_tx, state.hparams).update({'weights': g, 'arch': {}},
                                                                      state.weight_opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=bs, weight_opt_state=opt)
        return new, {'loss': loss, 'acc': acc, 'grad_norm': optax.tree.norm(g)}

    def eval_metrics(state: TrainState, batch):
        logits, _ = model.apply({'params': state.params['weights'], 'batch_stats': state.batch_stats},
                                normalize(batch['image']), train=False)
        loss, acc = cross_entropy(logits, batch['label'], batch.get('mask'))
        return {'loss': loss, 'acc': acc, 'count': jnp.sum(batch['mask']) if 'mask' in batch else len(logits)}

    traces: dict = {}
    jit_eval = jax.jit(_counted(eval_metrics, traces, 'eval_step', 'fixed'))
    run_eval = rarely_run(jit_eval)  # a few calls per epoch: an unoptimised compile pays off
    return Steps(weight_step=jax.jit(_counted(weight_step, traces, 'weight_step', 'fixed'), donate_argnums=0),
                 arch_step=None, eval_step=lambda state, batch, key=None: (state, run_eval(state, batch)),
                 traces=traces, eval_jit=jit_eval)
