"""Runs the same search steps in JAX and PyTorch and prints max abs differences per tensor group.

    python -m parity.compare --config configs/cifar10.py:smoke --steps 20 [--drop_ops=max_pool_3x3] [--config.x=y ...]
    python -m parity.compare --config configs/nb201.py:smoke --steps 5   # the NAS-Bench-201 space

With max_pool_3x3 in the space the trajectories part after a few steps while first-step values agree:
a max pool's output and gradient jump when two inputs of a window trade places, and the ~1e-7 drift
between the two sides does that where they lie closer than that (C=4, hard Gumbel: within 1e-7 for 4
iterations, then 3e-4 after one weight step). Exact ties are not the cause: XLA's reduce-window, the
`shift` max pool and torch all route a tied window's gradient to its first maximum.

Both sides start from the converted initial JAX state, see the same already-augmented float batches
(augmented once on the JAX side with asose_jax.data.augment) and the same JAX-drawn Gumbel noise. The
JAX side is network.search_network(spec).apply + gumbel.sample_tree + the optax transforms of asose_jax.search.optim, in
the order of asose_jax.search.steps (one weight step, then one arch step, per iteration); the torch side is
torch_network.torch_search_network(spec), the twin of the spec's space. Edge weights are always Gumbel
samples (hard or soft per config.search.hard): the config's `sampling`, `beta_reg` and tau schedule are not
modelled.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from asose_jax.search import gumbel
from asose_jax.search.optim import ArchOptConfig, WeightOptConfig, arch_transform, weight_transform
from asose_jax.search.steps import cross_entropy
from asose_jax.space.genotype import derive_arch
from asose_jax.space.network import search_network
from asose_jax.space.spec import NetworkSpec
from parity import torch_steps
from parity.convert import flax_to_torch
from parity.torch_network import torch_search_network


# ----------------------------------------------------------------------------- JAX side

def gumbel_noise(key, logits: dict) -> dict:
    """The noise gumbel.sample_tree(key, logits, ...) draws: one key per cell type in sorted order."""
    names = sorted(logits)
    keys = jax.random.split(key, len(names))
    return {n: jax.random.gumbel(k, logits[n].shape, logits[n].dtype) for n, k in zip(names, keys)}


def make_jax_grad_fn(spec: NetworkSpec, single_path: bool, depthwise_impl: str = 'conv'):
    """jit((weights, arch, batch_stats, x, y, key, tau, hard) ->
           (loss, train_logits, new_batch_stats, eval_logits), (g_weights, g_arch)).

    `hard` is traced (both samples are drawn, one is selected), so hard and soft Gumbel share one
    compiled program; eval_logits use the same edge weights with the incoming batch statistics.
    depthwise_impl: the JAX form of the depthwise convs and pools ('conv' or 'shift', same parameters).
    """
    model = search_network(spec, depthwise_impl)

    def edge_weights(arch, key, tau, hard):
        h, s = gumbel.sample_tree(key, arch, tau, True), gumbel.sample_tree(key, arch, tau, False)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(hard, a, b), h, s)

    def loss_fn(weights, arch, batch_stats, x, y, key, tau, hard):
        ew = edge_weights(arch, key, tau, hard)
        logits, upd = model.apply({'params': weights, 'batch_stats': batch_stats}, x, ew, train=True,
                                  single_path=single_path, mutable=['batch_stats'])
        loss, _ = cross_entropy(logits, y)
        return loss, (logits, upd['batch_stats'])

    grad = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

    def fn(weights, arch, batch_stats, x, y, key, tau, hard):
        (loss, (logits, bs)), grads = grad(weights, arch, batch_stats, x, y, key, tau, hard)
        ew = jax.lax.stop_gradient(edge_weights(arch, key, tau, hard))
        eval_logits = model.apply({'params': weights, 'batch_stats': batch_stats}, x, ew, train=False,
                                  single_path=single_path)
        return (loss, logits, bs, eval_logits), grads

    return jax.jit(fn)


def make_jax_forward_fn(spec: NetworkSpec, single_path: bool):
    """jit((weights, batch_stats, x, edge_weights) -> (train_logits, eval_logits))."""
    model = search_network(spec)

    def fn(weights, batch_stats, x, ew):
        v = {'params': weights, 'batch_stats': batch_stats}
        train, _ = model.apply(v, x, ew, train=True, single_path=single_path, mutable=['batch_stats'])
        return train, model.apply(v, x, ew, train=False, single_path=single_path)

    return jax.jit(fn)


# ----------------------------------------------------------------------------- helpers

def to_torch(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float32))


def nchw(x_nhwc) -> torch.Tensor:
    return to_torch(np.asarray(x_nhwc).transpose(0, 3, 1, 2))


def torch_model(spec: NetworkSpec, variables: dict) -> torch.nn.Module:
    """The spec's torch twin holding the converted JAX variables."""
    model = torch_search_network(spec)
    model.load_state_dict(flax_to_torch(spec, variables))
    return model


def max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f'shape mismatch {a.shape} vs {b.shape}')
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def tree_diff(spec: NetworkSpec, jax_tree: dict, torch_tensors: dict, keys: Sequence[str] | None = None):
    """Max abs diff between a JAX {'params': {'weights', 'arch'}, 'batch_stats'} tree (converted) and
    torch tensors by state_dict key, over `keys` (default: every key of the torch side). Also the
    global L2 norm of the JAX side over those keys."""
    ref = flax_to_torch(spec, jax_tree)
    keys = list(torch_tensors) if keys is None else list(keys)
    diff = max((max_diff(ref[k].numpy(), torch_tensors[k].detach().numpy()) for k in keys), default=0.0)
    norm = float(np.sqrt(sum(float((ref[k].double() ** 2).sum()) for k in keys)))
    return diff, norm


def labels(y) -> torch.Tensor:
    return torch.from_numpy(np.array(y, dtype=np.int64))


def torch_grads(model: torch.nn.Module) -> dict:
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def torch_batch_stats(model: torch.nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items() if k.endswith(('running_mean', 'running_var'))}


# ----------------------------------------------------------------------------- the comparison

@dataclasses.dataclass(frozen=True)
class Settings:
    hard: bool = True
    single_path: bool = True
    tau_max: float = 5.0
    tau_min: float = 1.0
    weight: WeightOptConfig = WeightOptConfig()
    arch: ArchOptConfig = ArchOptConfig()


def first_step(spec: NetworkSpec, variables: dict, x, y, key, tau, s: Settings, grad_fn=None) -> dict:
    """Differences of one forward/backward from the same state: logits (train, eval), loss, grads."""
    grad_fn = grad_fn or make_jax_grad_fn(spec, s.single_path)
    w, arch, bs = variables['params']['weights'], variables['params']['arch'], variables['batch_stats']
    (loss, logits, _, eval_logits), (g_w, g_a) = grad_fn(w, arch, bs, x, y, key, tau, s.hard)
    model = torch_model(spec, variables)
    noise = {t: to_torch(v) for t, v in gumbel_noise(key, arch).items()}
    xt, yt = nchw(x), labels(y)
    model.eval()
    with torch.no_grad():
        ew_t = torch_steps.sample_edge_weights(dict(model.arch.items()), noise, float(tau), s.hard)
        t_eval = model(xt, ew_t, s.single_path)
    model.train()
    ew_t = torch_steps.sample_edge_weights(dict(model.arch.items()), noise, float(tau), s.hard)
    t_loss, t_logits = torch_steps.loss_and_logits(model, xt, yt, ew_t, s.single_path)
    t_loss.backward()
    grads = torch_grads(model)
    jax_grads = {'params': {'weights': g_w, 'arch': g_a}, 'batch_stats': bs}
    w_keys = [n for n in grads if not n.startswith('arch.')]
    a_keys = [n for n in grads if n.startswith('arch.')]
    g_w_diff, g_w_norm = tree_diff(spec, jax_grads, grads, w_keys)
    g_a_diff, g_a_norm = tree_diff(spec, jax_grads, grads, a_keys)
    return {'logits (train)': max_diff(logits, t_logits.detach().numpy()),
            'logits (eval)': max_diff(eval_logits, t_eval.numpy()),
            'loss': abs(float(loss) - float(t_loss.detach())),
            'weight grads / |g|': g_w_diff / max(g_w_norm, 1e-12),
            'arch grads / |g|': g_a_diff / max(g_a_norm, 1e-12),
            'weight grads (abs)': g_w_diff, 'arch grads (abs)': g_a_diff}


@functools.lru_cache(maxsize=None)
def make_jax_update_fns(weight: WeightOptConfig, arch: ArchOptConfig, total_steps: int):
    """(init, weight_update, arch_update), jitted once per optimiser settings: an eager optax update
    dispatches every op of every leaf and costs more than compiling it.

    weight_update(params, opt, g_weights) / arch_update(params, opt, g_arch) -> (params, opt), the
    other group's gradient zero as in asose_jax.search.steps.
    """
    wtx, atx = weight_transform(weight, total_steps), arch_transform(arch)

    def zeros(tree):
        return jax.tree_util.tree_map(jnp.zeros_like, tree)

    def w_update(params, opt, g_w):
        return _apply(wtx, {'weights': g_w, 'arch': zeros(params['arch'])}, opt, params)

    def a_update(params, opt, g_a):
        return _apply(atx, {'weights': zeros(params['weights']), 'arch': g_a}, opt, params)

    init = jax.jit(lambda params: (wtx.init(params), atx.init(params)))
    return init, jax.jit(w_update), jax.jit(a_update)


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def trajectory(spec: NetworkSpec, variables: dict, batches: Sequence[tuple], key, steps: int, s: Settings,
               grad_fn=None, per_step: bool = False) -> dict:
    """`steps` iterations of (weight step on batches[2i], arch step on batches[2i+1]) on both sides.

    batches: (x_nhwc float32, y int) pairs, cycled. Returns the differences after the last step; with
    per_step, also 'per step': per half-step, the (max abs diff, leaf) of weights, arch logits, batch stats.
    """
    grad_fn = grad_fn or make_jax_grad_fn(spec, s.single_path)
    init, w_update, a_update = make_jax_update_fns(s.weight, s.arch, steps)
    params, bs = variables['params'], variables['batch_stats']
    w_opt, a_opt = init(params)
    model = torch_model(spec, variables)
    sgd, sched, adam = torch_steps.make_optimizers(model, s.weight, s.arch, steps)
    named = dict(model.named_parameters())
    w_keys = [n for n in named if not n.startswith('arch.')]
    a_keys = [f'arch.{t}' for t in spec.cell_types]
    losses, history = [], []
    for i in range(steps):
        tau = float(gumbel.temperature(i, steps, s.tau_max, s.tau_min))
        for phase in ('weights', 'arch'):
            x, y = batches[(2 * i + (phase == 'arch')) % len(batches)]
            k = jax.random.fold_in(jax.random.fold_in(key, i), phase == 'arch')
            (loss, _, bs, _), (g_w, g_a) = grad_fn(params['weights'], params['arch'], bs, x, y, k, tau, s.hard)
            noise = {t: to_torch(v) for t, v in _host(gumbel_noise(k, params['arch'])).items()}
            xt, yt = nchw(x), labels(y)
            if phase == 'weights':
                params, w_opt = w_update(params, w_opt, g_w)
                t_loss = torch_steps.weight_step(model, sgd, sched, xt, yt, noise, tau, s.hard, s.single_path,
                                                 s.weight.grad_clip)
            else:
                params, a_opt = a_update(params, a_opt, g_a)
                t_loss = torch_steps.arch_step(model, adam, xt, yt, noise, tau, s.hard, s.single_path)
            losses.append(abs(float(loss) - t_loss))
            if per_step or (i == steps - 1 and phase == 'arch'):
                ref = flax_to_torch(spec, _host({'params': params, 'batch_stats': bs}))
                stats = torch_batch_stats(model)
                history.append(tuple(_worst(ref, group) for group in (
                    {k: named[k] for k in w_keys}, {k: named[k] for k in a_keys}, stats)))
    g_jax = _genotype(spec, _host(params['arch']))
    g_torch = _genotype(spec, {t: a.detach().numpy() for t, a in model.arch.items()})
    out = {'loss (max over steps)': max(losses),
           f'weights after {steps} steps': history[-1][0][0],
           f'arch logits after {steps} steps': history[-1][1][0],
           f'batch stats after {steps} steps': history[-1][2][0],
           'worst leaves': tuple(k for _, k in history[-1]),
           'genotype identical': g_jax == g_torch, 'genotype': str(g_jax)}
    if per_step:
        out['per step'], out['loss per step'] = history, losses
    return out


def _genotype(spec: NetworkSpec, arch: dict):
    """The derived cell(s) of arch logits in the spec's space."""
    return derive_arch(arch, spec.space, spec.steps, spec.multiplier, spec.primitives)


def _worst(ref: dict, tensors: dict) -> tuple[float, str]:
    """(max abs diff, the key where it occurs) between converted JAX values and torch tensors."""
    return max((max_diff(ref[k].numpy(), v.detach().numpy()), k) for k, v in tensors.items())


def _apply(tx, grads, opt, params):
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt


# ----------------------------------------------------------------------------- CLI

def _batches(config, n: int, key) -> list:
    """n augmented float batches from the weight half (even) and arch half (odd) of the config's data."""
    from asose_jax.data import cifar as data_lib
    from asose_jax.train import load_splits
    if config.data.source == 'cifar_dir' and not os.path.isdir(config.data.dir):
        print(f'{config.data.dir} missing: using synthetic data')
        config.data.source = 'synthetic'
    splits = load_splits(config)
    bsz = config.search.batch_size
    out = []
    for i in range(n):
        split = splits['weights' if i % 2 == 0 else 'arch']
        idx = (np.arange(bsz) + (i // 2) * bsz) % len(split.labels)
        images, labels = split.images[idx], split.labels[idx]
        out.append((data_lib.augment(jax.random.fold_in(key, i), images, config.data.cutout), labels))
    return out


def main(argv):
    del argv
    from absl import flags
    from asose_jax.run import config as config_lib
    from asose_jax.space.network import init_search_variables
    c = flags.FLAGS.config
    with c.unlocked():
        c.model.primitives = [p for p in c.model.primitives if p not in flags.FLAGS.drop_ops]
        config_lib.validate(c)
    spec = config_lib.network_spec(c)
    steps = flags.FLAGS.steps
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # a tiny network: more threads only contend (10x slower on a shared 2-core CPU)
    key_init, key_data, key_noise = jax.random.split(jax.random.key(c.seed), 3)
    with c.unlocked():
        batches = _batches(c, 2 * steps, key_data)
    image_size = batches[0][0].shape[1]
    variables = init_search_variables(spec, key_init, image_size)
    s = Settings(hard=c.search.hard, single_path=c.search.single_path, tau_max=c.search.tau_max,
                 tau_min=c.search.tau_min, weight=config_lib.weight_opt_config(c), arch=config_lib.arch_opt_config(c))
    print(f'spec: C={c.model.C}, {len(spec.cells)} cells, {image_size}x{image_size}, batch {c.search.batch_size}, '
          f'hard={s.hard}, single_path={s.single_path}, {steps} x (weight step, arch step)', flush=True)
    grad_fn = make_jax_grad_fn(spec, s.single_path)
    x, y = batches[0]
    rows = first_step(spec, variables, x, y, key_noise, s.tau_max, s, grad_fn)
    traj = trajectory(spec, variables, batches, key_noise, steps, s, grad_fn, per_step=flags.FLAGS.per_step)
    if flags.FLAGS.per_step:
        print(f'{"step":<8} {"loss":>9}  max abs diff (leaf) of weights | arch logits | batch stats')
        for n, (row, loss) in enumerate(zip(traj.pop('per step'), traj.pop('loss per step'))):
            print(f'{n // 2:>3} {"wa"[n % 2]:<4} {loss:9.2e}  ' + ' | '.join(f'{d:.2e} ({k})' for d, k in row))
    rows.update(traj)
    print(f'{"tensor group":<32} max abs diff')
    for name, v in rows.items():
        print(f'{name:<32} {v:.3e}' if isinstance(v, float) else f'{name:<32} {v}')


if __name__ == '__main__':
    from absl import app, flags
    from asose_jax import train as _train  # noqa: F401  defines --config (and --workdir, unused here)
    flags.DEFINE_integer('steps', 20, 'Iterations of (weight step, arch step).')
    flags.DEFINE_bool('per_step', False, 'Also print the differences after every half-step (w: weight, a: arch).')
    flags.DEFINE_list('drop_ops', [], 'Primitives to remove from config.model.primitives (a list field, which '
                      'config flags cannot override), e.g. max_pool_3x3: a max pool turns the sides\' ~1e-7 drift '
                      'into a jump where two inputs of a window lie closer than that.')
    app.run(main)
