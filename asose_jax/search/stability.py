"""Search stability monitor: pure functions over the metric history (the metrics.jsonl dicts).

`assess(history, cfg)` looks at the epoch records of the latest phase and reports conditions
(oscillation, plateau, degradation, divergence), a health score in [0, 1], and the actions the
config asks for. It never acts itself: run.search_phase applies the actions local to a phase
(lower the arch lr, raise tau) and hands the others (grow, rollback, stop) to its caller.
Earlier actions are read back from the history's `"event": "monitor_action"` lines, so an action
is not repeated while its evidence is still inside the window (cooldown) and the function stays pure.

All thresholds are in the units of the metric they watch: for `val_acc` (a fraction in [0, 1])
`plateau_threshold=0.005` means half a percentage point.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from asose_jax.space.genotype import Genotype, PARAMETER_FREE, derive_arch

ON_OSCILLATION = ('none', 'lower_arch_lr', 'raise_tau')
ON_PLATEAU = ('none', 'grow')
ON_DIVERGENCE = ('none', 'rollback', 'stop')
COLLAPSE_REMEDIES = ('none', 'cap_skip', 'raise_arch_wd')
# metric -> +1 when higher is better, -1 when lower is better
METRICS = {'val_acc': 1, 'acc': 1, 'val_loss': -1, 'loss': -1}
ACTION_EVENT = 'monitor_action'
# how much one condition at twice its threshold takes off the health score
PENALTY = {'divergence': 1.0, 'degradation': 0.6, 'oscillation': 0.4, 'plateau': 0.3}


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """Thresholds and the action each condition triggers (config section `monitor`).

    metric: the watched quality ('val_acc', 'acc', 'val_loss', 'loss'); thresholds are in its units.
    window: epochs of the oscillation and divergence windows (>= 3).
    oscillation_threshold: std of the metric about its least-squares line over the window
      (a steady trend does not count as oscillation).
    plateau_patience / plateau_threshold: plateau when the best of the last `patience` epochs
      beats the best before them by less than `threshold`.
    degradation_threshold: drop of the latest value below the best value of the phase.
    divergence_rise: the train loss rose every epoch of the window, by more than this fraction
      in total; any non-finite loss is divergence too.
    max_param_free / collapse_remedy / max_skip / arch_wd_factor: the skip-connect collapse guard
      on the normal cell of the derived genotype (see `collapse`).
    """

    metric: str = 'val_acc'
    window: int = 4
    oscillation_threshold: float = 0.03
    plateau_patience: int = 5
    plateau_threshold: float = 0.005
    degradation_threshold: float = 0.05
    divergence_rise: float = 0.1
    on_oscillation: str = 'none'
    arch_lr_factor: float = 0.5
    tau_factor: float = 1.5
    on_plateau: str = 'none'
    on_divergence: str = 'none'
    max_param_free: int = 4
    collapse_remedy: str = 'none'
    max_skip: int = 2
    arch_wd_factor: float = 3.0

    def __post_init__(self):
        def check(ok, field, allowed):
            if not ok:
                raise ValueError(f'monitor.{field}={getattr(self, field)!r} is invalid; allowed: {allowed}')
        check(self.metric in METRICS, 'metric', str(tuple(METRICS)))
        check(self.window >= 3, 'window', 'an integer >= 3 (epochs; a line fit needs 3 points)')
        check(self.oscillation_threshold > 0, 'oscillation_threshold', 'a positive number (metric units)')
        check(self.plateau_patience >= 1, 'plateau_patience', 'an integer >= 1 (epochs)')
        check(self.plateau_threshold >= 0, 'plateau_threshold',
              'a number >= 0 in the metric\'s units (val_acc: 0.005 = half a percentage point)')
        check(self.degradation_threshold > 0, 'degradation_threshold', 'a positive number (metric units)')
        check(self.divergence_rise >= 0, 'divergence_rise', 'a fraction >= 0 of the loss')
        check(self.on_oscillation in ON_OSCILLATION, 'on_oscillation', str(ON_OSCILLATION))
        check(self.on_plateau in ON_PLATEAU, 'on_plateau', str(ON_PLATEAU))
        check(self.on_divergence in ON_DIVERGENCE, 'on_divergence', str(ON_DIVERGENCE))
        check(0 < self.arch_lr_factor < 1, 'arch_lr_factor', 'a factor in (0, 1)')
        check(self.tau_factor > 1, 'tau_factor', 'a factor > 1')
        check(self.max_param_free >= 0, 'max_param_free', 'an integer >= 0 (parameter-free ops in the normal cell)')
        check(self.collapse_remedy in COLLAPSE_REMEDIES, 'collapse_remedy', str(COLLAPSE_REMEDIES))
        check(self.max_skip >= 0, 'max_skip', 'an integer >= 0')
        check(self.arch_wd_factor > 1, 'arch_wd_factor', 'a factor > 1')

    @classmethod
    def from_config(cls, section: Mapping) -> 'MonitorConfig':
        section = dict(section.to_dict() if hasattr(section, 'to_dict') else section)
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f'monitor has unknown fields {sorted(unknown)}')
        return cls(**section)


@dataclasses.dataclass(frozen=True)
class Condition:
    kind: str        # 'oscillation' | 'plateau' | 'degradation' | 'divergence' | 'collapse'
    value: float     # what was measured
    threshold: float
    reason: str


@dataclasses.dataclass(frozen=True)
class Action:
    kind: str        # 'lower_arch_lr' | 'raise_tau' | 'grow' | 'rollback' | 'stop' | 'cap_skip' | 'raise_arch_wd'
    condition: str
    reason: str
    factor: float | None = None


@dataclasses.dataclass(frozen=True)
class Assessment:
    health: float
    conditions: tuple[Condition, ...]
    actions: tuple[Action, ...]


def _float(v) -> float:
    """metrics.jsonl writes non-finite floats as strings ('nan', 'inf')."""
    return float(v)


def epoch_records(history: Sequence[Mapping], phase: str | None = None) -> list[Mapping]:
    """Epoch lines (not events) of `phase`, or of the latest phase in the history."""
    records = [r for r in history if 'event' not in r]
    if phase is None:
        phase = records[-1]['phase'] if records else None
    return [r for r in records if r.get('phase') == phase]


def _series(records: Sequence[Mapping], key: str) -> np.ndarray:
    missing = [r.get('epoch') for r in records if key not in r]
    if missing:
        raise ValueError(f'metric {key!r} missing from the records of epochs {missing}')
    return np.array([_float(r[key]) for r in records], np.float64)


def oscillation(values: np.ndarray, window: int, threshold: float) -> Condition | None:
    """Std of the last `window` values about their least-squares line (variance not explained by a trend)."""
    v = values[-window:]
    if len(v) < window or not np.all(np.isfinite(v)):
        return None
    x = np.arange(window, dtype=np.float64)
    residual = v - np.polyval(np.polyfit(x, v, 1), x)
    std = float(residual.std())
    if std <= threshold:
        return None
    return Condition('oscillation', std, threshold,
                     f'std {std:.4f} about the trend over the last {window} epochs > {threshold}')


def plateau(values: np.ndarray, sign: int, patience: int, threshold: float) -> Condition | None:
    """No improvement beyond `threshold` (metric units) within the last `patience` epochs."""
    v = sign * values
    if len(v) <= patience or not np.all(np.isfinite(v)):
        return None
    gain = float(v[-patience:].max() - v[:-patience].max())
    if gain >= threshold:
        return None
    return Condition('plateau', gain, threshold,
                     f'best of the last {patience} epochs improves on the earlier best by {gain:.4f} < {threshold}')


def degradation(values: np.ndarray, sign: int, threshold: float) -> Condition | None:
    """The latest value fell more than `threshold` below the best of the phase (not the first value)."""
    v = sign * values
    if len(v) < 2 or not np.all(np.isfinite(v)):
        return None
    best = int(np.argmax(v))
    drop = float(v[best] - v[-1])
    if drop <= threshold:
        return None
    return Condition('degradation', drop, threshold,
                     f'{drop:.4f} below the best (epoch index {best} of the phase) > {threshold}')


def divergence(losses: np.ndarray, window: int, rise: float) -> Condition | None:
    """A non-finite latest loss, or a loss that rose every epoch of the window by > `rise` in total."""
    if len(losses) and not np.isfinite(losses[-1]):
        return Condition('divergence', float('inf'), rise, f'non-finite train loss {losses[-1]}')
    v = losses[-window:]
    if len(v) < window:
        return None
    total = float(v[-1] / v[0] - 1.0) if v[0] > 0 else float('inf')
    if not (np.all(np.diff(v) > 0) and total > rise):
        return None
    return Condition('divergence', total, rise,
                     f'train loss rose every epoch of the last {window}, by {100 * total:.1f}% > {100 * rise:.1f}%')


def health(conditions: Sequence[Condition]) -> float:
    """1 for a clean history; each condition takes off PENALTY[kind] * min(1, value / (2 * threshold))."""
    h = 1.0
    for c in conditions:
        if c.kind not in PENALTY:
            continue
        if not math.isfinite(c.value):
            return 0.0
        severity = 1.0 if c.threshold <= 0 else min(1.0, abs(c.value) / (2 * c.threshold))
        if c.kind == 'plateau':  # value is the (small) gain: the smaller, the worse
            severity = 1.0 if c.threshold <= 0 else min(1.0, 1.0 - c.value / (2 * c.threshold))
        h *= 1.0 - PENALTY[c.kind] * max(severity, 0.5)
    return float(min(max(h, 0.0), 1.0))


def _recent_actions(history: Sequence[Mapping], phase: str, epoch: int, kind: str, cooldown: int) -> bool:
    return any(r.get('event') == ACTION_EVENT and r.get('phase') == phase and r.get('action') == kind
               and epoch - int(r.get('epoch', -10**9)) < cooldown for r in history)


def assess(history: Sequence[Mapping], cfg: MonitorConfig) -> Assessment:
    """Conditions, health and configured actions for the latest epoch of the latest phase.

    An action is left out while the same action was taken in this phase within its cooldown
    (`window` epochs; `plateau_patience` for grow): its evidence is still in the window.
    """
    records = epoch_records(history)
    if not records:
        return Assessment(1.0, (), ())
    phase, epoch = records[-1]['phase'], int(records[-1].get('epoch', len(records) - 1))
    sign = METRICS[cfg.metric]
    metric = _series(records, cfg.metric)
    found = [oscillation(metric, cfg.window, cfg.oscillation_threshold),
             plateau(metric, sign, cfg.plateau_patience, cfg.plateau_threshold),
             degradation(metric, sign, cfg.degradation_threshold),
             divergence(_series(records, 'loss'), cfg.window, cfg.divergence_rise)]
    conditions = tuple(c for c in found if c is not None)
    wanted = {'oscillation': (cfg.on_oscillation, cfg.window),
              'plateau': (cfg.on_plateau, cfg.plateau_patience),
              'divergence': (cfg.on_divergence, cfg.window)}
    factors = {'lower_arch_lr': cfg.arch_lr_factor, 'raise_tau': cfg.tau_factor}
    actions = []
    for c in conditions:
        kind, cooldown = wanted.get(c.kind, ('none', 0))
        if kind == 'none' or _recent_actions(history, phase, epoch, kind, cooldown):
            continue
        actions.append(Action(kind, c.kind, f'{phase} epoch {epoch}: {c.kind} ({c.reason})', factors.get(kind)))
    return Assessment(health(conditions), conditions, tuple(actions))


def count_param_free(cell: Sequence[tuple[str, int]]) -> int:
    return sum(op in PARAMETER_FREE for op, _ in cell)


def collapse(genotype: Genotype, cfg: MonitorConfig) -> Condition | None:
    """Skip-connect collapse: the normal cell holds more than `max_param_free` parameter-free ops.

    Only the normal cell counts: pooling in the reduction cell is the usual, healthy outcome.
    """
    n = count_param_free(genotype.normal)
    if n <= cfg.max_param_free:
        return None
    ops = [op for op, _ in genotype.normal if op in PARAMETER_FREE]
    return Condition('collapse', float(n), float(cfg.max_param_free),
                     f'normal cell has {n} parameter-free ops {ops} > monitor.max_param_free={cfg.max_param_free}')


@dataclasses.dataclass(frozen=True)
class Guarded:
    genotype: Genotype           # what the run should use
    raw: Genotype                # plain DARTS derivation
    condition: Condition | None  # the collapse warning, if any
    capped: bool                 # genotype came from derive(max_skip=cfg.max_skip)


def guarded_genotype(arch: Mapping, cfg: MonitorConfig, steps: int = 4, multiplier: int = 4,
                     primitives: Sequence[str] | None = None, space: str = 'darts') -> Guarded:
    """Derives the genotype of `arch` (DARTS: {'normal', 'reduce'} logits; NAS-Bench-201: {'cell'})
    with the collapse guard.

    With `collapse_remedy='cap_skip'` a collapsed normal cell is re-derived with at most
    `max_skip` skip_connects (P-DARTS); other remedies leave the derivation alone.
    """
    raw = derive_arch(arch, space, steps, multiplier, primitives)
    cond = collapse(raw, cfg)
    if cond is None or cfg.collapse_remedy != 'cap_skip':
        return Guarded(raw, raw, cond, False)
    return Guarded(derive_arch(arch, space, steps, multiplier, primitives, cfg.max_skip), raw, cond, True)
