"""Run outputs: metrics as JSON lines and TensorBoard events, genotype history, arch statistics
(host-side, numpy)."""
from __future__ import annotations

import json
import math
import numbers
import os

import numpy as np
from tensorboardX import SummaryWriter

from asose_jax.space.genotype import Genotype, PARAMETER_FREE


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
    """Appends one JSON object per line to workdir/metrics.jsonl (flushed each line) and mirrors
    it to TensorBoard event files in workdir/tensorboard.

    TensorBoard tags are `<phase>/<key>` (e.g. `search/op_weight/normal/sep_conv_3x3`); the step
    is the global epoch: the index of the epoch line in metrics.jsonl, counting every phase, so
    the curves of all phases line up one after the other. Events (`event()`) sit at the step of
    the latest epoch line.
    """

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self.tb_dir = os.path.join(workdir, 'tensorboard') if tensorboard else None
        self._tb = None
        self.global_epoch = sum('event' not in r for r in self.read())  # resume appends after the old lines

    def _append(self, record: dict) -> None:
        with open(self.path, 'a') as f:
            f.write(json.dumps(_plain(record), sort_keys=True) + '\n')

    def _summary(self) -> SummaryWriter | None:
        if self.tb_dir and self._tb is None:
            # tensorboardX writes from a background thread: events reach the file within flush_secs
            # (or at close()); its flush() does not wait for that thread
            self._tb = SummaryWriter(self.tb_dir, flush_secs=1)
        return self._tb

    def write(self, record: dict) -> None:
        """One epoch line: numbers become scalars, strings text, under `<phase>/<key>`."""
        self._append(record)
        tb = self._summary()
        if tb is not None:
            phase = record.get('phase', 'run')
            for k, v in record.items():
                if k in ('phase', 'epoch') or isinstance(v, bool):
                    continue
                if hasattr(v, 'item') and np.ndim(v) == 0:
                    v = v.item()
                if isinstance(v, numbers.Real):
                    tb.add_scalar(f'{phase}/{k}', float(v), self.global_epoch)
                elif isinstance(v, str):
                    tb.add_text(f'{phase}/{k}', v, self.global_epoch)
        self.global_epoch += 1

    def event(self, kind: str, /, **fields) -> dict:
        """A run event (growth, monitor action, collapse warning): a JSONL line with `"event": kind`,
        a TensorBoard text `events/<kind>` holding the fields and a scalar 1 at the current epoch."""
        if not kind or not isinstance(kind, str):
            raise ValueError(f'MetricsWriter.event: kind must be a non-empty string, got {kind!r}')
        if 'event' in fields:
            raise ValueError('MetricsWriter.event: "event" is the kind, not a field')
        record = {'event': kind, 'global_epoch': max(self.global_epoch - 1, 0), **fields}
        self._append(record)
        tb = self._summary()
        if tb is not None:
            tb.add_text(f'events/{kind}', json.dumps(_plain(fields), sort_keys=True), record['global_epoch'])
            tb.add_scalar(f'events/{kind}', 1.0, record['global_epoch'])
        return record

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def close(self) -> None:
        """Writes out the pending TensorBoard events (call at the end of a run)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def arch_entropy(logits) -> float:
    """Mean entropy (nats) of softmax over ops, averaged over the edges of one logits array."""
    p = softmax(logits)
    return float(-(p * np.log(np.clip(p, 1e-30, None))).sum(-1).mean())


def softmax(logits) -> np.ndarray:
    a = np.asarray(logits, np.float64)
    p = np.exp(a - a.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def op_weights(arch: dict, primitives) -> dict:
    """Softmax weight of every op averaged over the edges, per cell type: `op_weight/<cell>/<op>`."""
    out = {}
    for cell, logits in arch.items():
        p = softmax(logits)
        if p.shape[-1] != len(primitives):
            raise ValueError(f'arch[{cell!r}] has {p.shape[-1]} ops, primitives lists {len(primitives)}')
        out.update({f'op_weight/{cell}/{op}': float(w) for op, w in zip(primitives, p.mean(0))})
    return out


def genotype_stats(g: Genotype) -> dict:
    return {'skip_count': g.count(['skip_connect']), 'param_free_count': g.count(PARAMETER_FREE),
            'param_free_normal': sum(op in PARAMETER_FREE for op, _ in g.normal),
            'param_free_reduce': sum(op in PARAMETER_FREE for op, _ in g.reduce)}


def save_genotype(path: str, g: Genotype, alphas: dict | None = None, primitives=None, **extra) -> None:
    """Writes the genotype JSON; `alphas` (raw logits per cell type) are stored softmaxed, as
    `alphas: {cell: [[weight per op] per edge]}` with `primitives` naming the columns."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    if alphas is not None:
        if primitives is None:
            raise ValueError('save_genotype: alphas need the primitives that name their columns')
        extra['alphas'] = {t: softmax(a).tolist() for t, a in alphas.items()}
        extra['primitives'] = list(primitives)
    with open(path, 'w') as f:
        json.dump({**g.to_dict(), 'string': str(g), **_plain(extra)}, f, indent=1)
