"""Weight and arch steps in torch with asose_jax/search/optim.py's semantics.

Weights: clip the global gradient norm, add L2 decay, momentum SGD (torch.optim.SGD does decay then
momentum), learning rate on a per-step cosine (CosineAnnealingLR stepped after every weight step).
Every weight parameter takes part in every step: an op not evaluated in single-path mode gets a zero
gradient (not None), so decay and momentum still move it, as optax does with its zero gradient.
Arch: torch.optim.Adam with L2 decay added to the gradient (optax add_decayed_weights -> adam).
Edge weights come from JAX-drawn Gumbel noise (`sample_edge_weights`), never from torch's RNG.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from asose_jax.search.optim import ArchOptConfig, WeightOptConfig
from torch import nn


def make_optimizers(model: nn.Module, weight_cfg: WeightOptConfig, arch_cfg: ArchOptConfig,
                    total_steps: int):
    """(weight SGD, its per-step cosine scheduler, arch Adam)."""
    sgd = torch.optim.SGD(model.weight_parameters(), lr=weight_cfg.lr, momentum=weight_cfg.momentum,
                          weight_decay=weight_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=max(total_steps, 1), eta_min=weight_cfg.lr_min)
    adam = torch.optim.Adam(model.arch_parameters(), lr=arch_cfg.lr, betas=(arch_cfg.b1, arch_cfg.b2), eps=1e-8,
                            weight_decay=arch_cfg.weight_decay)
    return sgd, sched, adam


def sample_edge_weights(logits: dict, noise: dict, tau: float, hard: bool) -> dict:
    """gumbel.sample with given noise: softmax((logits + g) / tau), straight-through one-hot if hard."""
    out = {}
    for t, a in logits.items():
        soft = torch.softmax((a + noise[t]) / tau, dim=-1)
        if hard:
            one_hot = F.one_hot(torch.argmax(soft, dim=-1), a.shape[-1]).to(soft.dtype)
            soft = one_hot + soft - soft.detach()
        out[t] = soft
    return out


def loss_and_logits(model: nn.Module, x, y, edge_weights: dict, single_path: bool):
    logits = model(x, edge_weights, single_path)
    return F.cross_entropy(logits, y), logits


def _zero_missing_grads(params):
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def weight_step(model: nn.Module, sgd, sched, x, y, noise: dict, tau: float, hard: bool,
                single_path: bool, grad_clip: float) -> float:
    """One weight step on edge weights sampled from the detached logits; returns the loss."""
    model.train()
    sgd.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    ew = sample_edge_weights({t: a.detach() for t, a in model.arch.items()}, noise, tau, hard)
    loss, _ = loss_and_logits(model, x, y, ew, single_path)
    loss.backward()
    params = model.weight_parameters()
    _zero_missing_grads(params)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    sgd.step()
    sched.step()
    return float(loss.detach())


def arch_step(model: nn.Module, adam, x, y, noise: dict, tau: float, hard: bool, single_path: bool) -> float:
    """One first-order arch step through the sampled edge weights; returns the loss."""
    model.train()
    model.zero_grad(set_to_none=True)
    ew = sample_edge_weights(dict(model.arch.items()), noise, tau, hard)
    loss, _ = loss_and_logits(model, x, y, ew, single_path)
    loss.backward()
    _zero_missing_grads(model.arch_parameters())
    adam.step()
    return float(loss.detach())
