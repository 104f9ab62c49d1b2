"""Stability monitor on hand-made metric histories, and the skip-connect collapse guard."""
import dataclasses
import math

import numpy as np
import pytest

from asose_jax.run.config import ConfigError, base_config, validate
from asose_jax.search import stability
from asose_jax.search.stability import MonitorConfig, assess
from asose_jax.space.genotype import PRIMITIVES, derive, num_edges

CFG = MonitorConfig(window=4, oscillation_threshold=0.02, plateau_patience=3, plateau_threshold=0.005,
                    degradation_threshold=0.05, divergence_rise=0.1, on_oscillation='lower_arch_lr',
                    on_plateau='grow', on_divergence='rollback')


def history(val_acc, loss=None, phase='search'):
    loss = loss if loss is not None else [2.0 - 0.1 * i for i in range(len(val_acc))]
    return [{'phase': phase, 'epoch': i, 'val_acc': a, 'loss': l} for i, (a, l) in enumerate(zip(val_acc, loss))]


def kinds(a):
    return sorted(c.kind for c in a.conditions)


def test_clean_history_is_healthy():
    a = assess(history([0.10, 0.14, 0.19, 0.23, 0.28, 0.31, 0.35, 0.40]), CFG)
    assert kinds(a) == [] and a.actions == () and a.health == 1.0


def test_steady_trend_is_not_oscillation():
    assert stability.oscillation(np.linspace(0.1, 0.9, 6), 4, 0.001) is None


def test_oscillation_fires_and_acts():
    a = assess(history([0.10, 0.20, 0.30, 0.22, 0.34, 0.24, 0.36]), CFG)
    assert 'oscillation' in kinds(a)
    act = [x for x in a.actions if x.condition == 'oscillation']
    assert len(act) == 1 and act[0].kind == 'lower_arch_lr' and act[0].factor == CFG.arch_lr_factor
    assert 'oscillation' in act[0].reason and 'epoch 6' in act[0].reason
    assert 0 < a.health < 1
    tau = assess(history([0.10, 0.20, 0.30, 0.22, 0.34, 0.24, 0.36]),
                 dataclasses.replace(CFG, on_oscillation='raise_tau'))
    assert [x.kind for x in tau.actions if x.condition == 'oscillation'] == ['raise_tau']


def test_plateau_threshold_in_metric_units():
    flat = [0.10, 0.30, 0.400, 0.402, 0.403, 0.404]  # +0.4 points over the patience: below half a point
    a = assess(history(flat), CFG)
    assert kinds(a) == ['plateau'] and [x.kind for x in a.actions] == ['grow']
    moving = [0.10, 0.30, 0.400, 0.402, 0.403, 0.406]  # +0.6 points: improving
    assert kinds(assess(history(moving), CFG)) == []


def test_degradation_from_best_not_first():
    a = assess(history([0.10, 0.50, 0.55, 0.56, 0.50, 0.49, 0.48], loss=[1.0] * 7), CFG)
    deg = [c for c in a.conditions if c.kind == 'degradation']
    assert len(deg) == 1 and math.isclose(deg[0].value, 0.08)  # 0.56 - 0.48, the first value 0.10 is lower
    assert a.actions == () or all(x.condition != 'degradation' for x in a.actions)


def test_divergence_rising_and_non_finite():
    rising = history([0.1, 0.2, 0.3, 0.4, 0.5], loss=[2.0, 1.5, 1.7, 1.9, 2.2])
    a = assess(rising, CFG)
    assert 'divergence' in kinds(a) and [x.kind for x in a.actions] == ['rollback']
    slight = history([0.1, 0.2, 0.3, 0.4, 0.5], loss=[2.0, 1.5, 1.51, 1.52, 1.53])  # +1.3%: under 10%
    assert 'divergence' not in kinds(assess(slight, CFG))
    nan = history([0.1, 0.2, 'nan'], loss=[2.0, 1.5, 'nan'])  # metrics.jsonl spelling of NaN
    b = assess(nan, dataclasses.replace(CFG, on_divergence='stop'))
    assert kinds(b) == ['divergence'] and b.health == 0.0 and [x.kind for x in b.actions] == ['stop']


def test_cooldown_reads_logged_actions():
    h = history([0.10, 0.20, 0.30, 0.22, 0.34, 0.24, 0.36])
    done = {'event': stability.ACTION_EVENT, 'phase': 'search', 'epoch': 5, 'action': 'lower_arch_lr'}
    logged = h[:-1] + [done] + h[-1:]
    assert 'oscillation' in kinds(assess(logged, CFG))
    assert all(x.kind != 'lower_arch_lr' for x in assess(logged, CFG).actions)
    other_phase = [dict(r, phase='warmup') if 'event' in r else r for r in logged]
    assert any(x.kind == 'lower_arch_lr' for x in assess(other_phase, CFG).actions)


def test_only_latest_phase_counts():
    h = history([0.1, 0.5, 0.6, 0.7], phase='warmup') + history([0.1, 0.15, 0.2], phase='search')
    assert kinds(assess(h, CFG)) == []  # the drop from warmup's 0.7 is not degradation of the search


def test_config_validation():
    with pytest.raises(ValueError, match='plateau_threshold'):
        MonitorConfig(plateau_threshold=-0.1)
    with pytest.raises(ValueError, match="on_plateau='shrink'"):
        MonitorConfig(on_plateau='shrink')
    with pytest.raises(ValueError, match='unknown fields'):
        MonitorConfig.from_config({'windw': 3})
    c = base_config()
    c.monitor.collapse_remedy = 'pray'
    with pytest.raises(ConfigError, match='monitor.collapse_remedy'):
        validate(c)
    with pytest.raises(ValueError, match='missing'):
        assess([{'phase': 'search', 'epoch': 0, 'loss': 1.0}], CFG)


def skip_heavy_alphas(seed=0):
    """Normal-cell logits where skip_connect wins on every edge, sep_conv_3x3 second."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.01, (num_edges(4), len(PRIMITIVES)))
    a[:, PRIMITIVES.index('skip_connect')] += 2.0 + rng.uniform(0, 1, num_edges(4))
    a[:, PRIMITIVES.index('sep_conv_3x3')] += 1.0
    return a, rng.normal(0, 0.01, a.shape)


def test_derive_caps_skips_keeping_the_strongest():
    normal, reduce = skip_heavy_alphas()
    raw = derive(normal, reduce)
    assert sum(op == 'skip_connect' for op, _ in raw.normal) == 8
    capped = derive(normal, reduce, max_skip=2)
    skips = [i for i, (op, _) in enumerate(capped.normal) if op == 'skip_connect']
    assert len(skips) == 2 and {op for op, _ in capped.normal} == {'skip_connect', 'sep_conv_3x3'}
    # the two skips kept are the two strongest skip weights among the raw genotype's edges
    rows = [sum(2 + t for t in range(i // 2)) + j for i, (_, j) in enumerate(raw.normal)]
    k = PRIMITIVES.index('skip_connect')
    strongest = sorted(rows, key=lambda r: -normal[r, k])[:2]
    capped_rows = [sum(2 + t for t in range(i // 2)) + j for i, (_, j) in enumerate(capped.normal)]
    kept = [capped_rows[i] for i in skips]
    assert sorted(kept) == sorted(strongest)
    assert capped.reduce == raw.reduce
    assert derive(normal, reduce, max_skip=8) == raw
    with pytest.raises(ValueError, match='max_skip'):
        derive(normal, reduce, max_skip=-1)


def test_collapse_guard_warns_and_caps():
    normal, reduce = skip_heavy_alphas()
    arch = {'normal': normal, 'reduce': reduce}
    warn = stability.guarded_genotype(arch, MonitorConfig(max_param_free=4, collapse_remedy='none'))
    assert warn.condition is not None and not warn.capped and warn.genotype == warn.raw
    assert 'normal cell has 8 parameter-free ops' in warn.condition.reason
    cap = stability.guarded_genotype(arch, MonitorConfig(max_param_free=4, collapse_remedy='cap_skip', max_skip=2))
    assert cap.capped and cap.genotype.reduce == cap.raw.reduce
    assert sum(op == 'skip_connect' for op, _ in cap.genotype.normal) == 2
    calm = stability.guarded_genotype({'normal': reduce, 'reduce': reduce}, MonitorConfig(max_param_free=8))
    assert calm.condition is None


def test_arch_state_carries_over_lr_and_wd_changes():
    """lower_arch_lr / raise_arch_wd rebuild the arch transform; the old Adam state must fit the new one."""
    import jax
    import jax.numpy as jnp
    from asose_jax.search.optim import ArchOptConfig, arch_transform
    params = {'weights': {'w': jnp.ones(3)}, 'arch': {'normal': jnp.zeros((5, 4))}}
    old = arch_transform(ArchOptConfig()).init(params)
    new_tx = arch_transform(ArchOptConfig(weight_decay=3e-3), lr_scale=0.5)
    assert jax.tree_util.tree_structure(new_tx.init(params)) == jax.tree_util.tree_structure(old)
    grads = {'weights': {'w': jnp.zeros(3)}, 'arch': {'normal': jnp.ones((5, 4))}}
    updates, _ = new_tx.update(grads, old, params)  # the carried state is accepted
    assert float(jnp.abs(updates['arch']['normal']).max()) > 0
