"""When to grow and what kind: host-side pure functions over the config and the metric history."""
from __future__ import annotations

import numpy as np

from asose_jax.growth.operations import KINDS, SPACE_KINDS
from asose_jax.search import stability
from asose_jax.space.spec import NetworkSpec

TRIGGERS = ('none', 'schedule', 'plateau')
KINDS_OR_AUTO = KINDS + ('auto',)
OVERFIT_GAP = 0.15  # train acc - val acc (fractions) above which 'auto' regularises first


def parse_schedule(text: str) -> dict[int, str]:
    """'0:depth,2:width' -> {0: 'depth', 2: 'width'} (search epochs after which to grow)."""
    schedule: dict[int, str] = {}
    for item in filter(None, (s.strip() for s in text.split(','))):
        epoch, sep, kind = item.partition(':')
        if not sep or not epoch.strip().isdigit():
            raise ValueError(f"entry {item!r} is not 'EPOCH:KIND' with EPOCH an integer >= 0")
        if kind.strip() not in KINDS_OR_AUTO:
            raise ValueError(f'entry {item!r}: kind {kind.strip()!r} not in {list(KINDS_OR_AUTO)}')
        if int(epoch) in schedule:
            raise ValueError(f'epoch {int(epoch)} appears twice')
        schedule[int(epoch)] = kind.strip()
    return schedule


def candidates(kind: str, spec: NetworkSpec, history: list[dict], done: list[str]) -> list[str]:
    """Kinds to try in order (the caller skips those that hit a cap). `kind` other than 'auto' is
    tried alone. 'auto': regularise first if train accuracy exceeds val accuracy by more than
    OVERFIT_GAP and the network is not regularised yet; then depth and width, whichever was
    applied fewer times (depth on ties); then a missing candidate op; then attention; of these, the kinds
    the spec's space can grow (SPACE_KINDS: a NAS-Bench-201 network only widens)."""
    if kind != 'auto':
        return [kind]
    order = []
    last = history[-1] if history else {}
    if last.get('acc', 0.0) - last.get('val_acc', 0.0) > OVERFIT_GAP and spec.dropout == 0 and spec.drop_path == 0:
        order.append('regularise')
    order += sorted(('depth', 'width'), key=lambda k: (done.count(k), k != 'depth'))
    return [k for k in order + ['branch', 'attention'] if k in SPACE_KINDS[spec.space]]


def decide(growth_cfg, search_epoch: int, val_accs_since_growth: list[float], n_growths: int) -> str | None:
    """The configured kind (or 'auto') to grow after this search epoch, or None."""
    if growth_cfg.trigger == 'none' or n_growths >= growth_cfg.max_growths:
        return None
    if growth_cfg.trigger == 'schedule':
        return parse_schedule(growth_cfg.schedule).get(search_epoch)
    if stability.plateau(np.asarray(val_accs_since_growth, float), 1, growth_cfg.plateau_window,
                         growth_cfg.plateau_threshold) is not None:
        return growth_cfg.kind
    return None


def options(kind: str, growth_cfg) -> dict:
    """The operation's options from the config."""
    g = growth_cfg
    return {'depth': {'stage': g.deepen_stage}, 'width': {'stage': -1, 'factor': g.width_factor},
            'branch': {'op': g.branch_op, 'init_weight': g.branch_init_weight},
            'attention': {'cell': g.attention_cell},
            'regularise': {'drop_path': g.drop_path, 'dropout': g.dropout},
            'prune': {'fraction': g.prune_fraction}}[kind]


def cap_violation(spec: NetworkSpec, params: int, growth_cfg) -> str | None:
    """Why a grown spec exceeds a cap, or None."""
    g = growth_cfg
    if spec.layers > g.max_cells:
        return f'{spec.layers} cells > growth.max_cells={g.max_cells}'
    if max(c.C for c in spec.cells) > g.max_C:
        return f'C={max(c.C for c in spec.cells)} > growth.max_C={g.max_C}'
    if params > g.max_params:
        return f'{params:,} weights > growth.max_params={g.max_params:,}'
    return None
