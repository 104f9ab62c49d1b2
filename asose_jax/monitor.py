"""Run outputs: metrics as JSON lines, genotype history, arch statistics (host-side, numpy)."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from asose_jax.genotype import PARAMETER_FREE, Genotype


def _plain(v):
    """JSON-friendly scalars: numpy/jax scalars to float/int, non-finite floats to strings."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, 'item') and np.ndim(v) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsWriter:
    """Appends one JSON object per line to workdir/metrics.jsonl (flushed each line)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, 'metrics.jsonl')

    def write(self, record: dict) -> None:
        with open(self.path, 'a') as f:
            f.write(json.dumps(_plain(record), sort_keys=True) + '\n')

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


def arch_entropy(logits) -> float:
    """Mean entropy (nats) of softmax over ops, averaged over the edges of one logits array."""
    a = np.asarray(logits, np.float64)
    p = np.exp(a - a.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return float(-(p * np.log(np.clip(p, 1e-30, None))).sum(-1).mean())


def genotype_stats(g: Genotype) -> dict:
    return {'skip_count': g.count(['skip_connect']), 'param_free_count': g.count(PARAMETER_FREE)}


def save_genotype(path: str, g: Genotype, **extra) -> None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        json.dump({**g.to_dict(), 'string': str(g), **_plain(extra)}, f, indent=1)
