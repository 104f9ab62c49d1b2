"""NAS-Bench-201 cells: the op set, the edge order, architecture strings both ways, derivation.

The benchmark's string lists the cell's nodes 1..3, each as `|op~src|` terms joined by '+':
`|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|`.
The 6 edges in that order are the rows of the [6, 5] arch logits. numpy only (host-side tools use it).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

NB201_OPS: tuple[str, ...] = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
NB201_PARAMETER_FREE = frozenset({'none', 'skip_connect', 'avg_pool_3x3'})
NODES = 4  # node 0 is the cell input, node 3 its output
EDGES: tuple[tuple[int, int], ...] = tuple((dst, src) for dst in range(1, NODES) for src in range(dst))  # (dst, src)


@dataclasses.dataclass(frozen=True)
class NB201Genotype:
    """One op per edge of the NB201 cell, in `EDGES` order (the benchmark string's order)."""

    ops: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, 'ops', tuple(str(op) for op in self.ops))
        if len(self.ops) != len(EDGES):
            raise ValueError(f'an NB201 cell has {len(EDGES)} edges, got {len(self.ops)} ops')
        bad = [op for op in self.ops if op not in NB201_OPS]
        if bad:
            raise ValueError(f'unknown NB201 ops {bad}; allowed: {list(NB201_OPS)}')

    @property
    def normal(self) -> tuple[tuple[str, int], ...]:
        """(op, src) per edge: the same view the DARTS genotype's normal cell gives (monitor, guard)."""
        return tuple((op, src) for op, (_, src) in zip(self.ops, EDGES))

    reduce: tuple = ()  # the reductions of the NB201 network are fixed ResNet blocks

    def __str__(self) -> str:
        nodes = ['|' + '|'.join(f'{op}~{src}' for op, (d, src) in zip(self.ops, EDGES) if d == dst) + '|'
                 for dst in range(1, NODES)]
        return '+'.join(nodes)

    @classmethod
    def from_string(cls, text: str) -> 'NB201Genotype':
        """Parses the benchmark's string; every malformed part is named in the error."""
        text = str(text).strip()
        nodes = text.split('+')
        if len(nodes) != NODES - 1:
            raise ValueError(f'NB201 arch string {text!r}: expected {NODES - 1} nodes joined by "+", '
                             f'got {len(nodes)}')
        ops = []
        for dst, node in enumerate(nodes, start=1):
            if not (node.startswith('|') and node.endswith('|')) or len(node) < 2:
                raise ValueError(f'NB201 arch string {text!r}: node {dst} {node!r} must look like |op~src|...|')
            terms = node[1:-1].split('|')
            if len(terms) != dst:
                raise ValueError(f'NB201 arch string {text!r}: node {dst} needs {dst} edges (from nodes '
                                 f'0..{dst - 1}), got {len(terms)}')
            for src, term in enumerate(terms):
                m = re.fullmatch(r'([a-z0-9_]+)~(\d+)', term)
                if m is None:
                    raise ValueError(f'NB201 arch string {text!r}: edge {term!r} of node {dst} is not op~src')
                if int(m.group(2)) != src:
                    raise ValueError(f'NB201 arch string {text!r}: edge {term!r} of node {dst} must read node {src}')
                if m.group(1) not in NB201_OPS:
                    raise ValueError(f'NB201 arch string {text!r}: unknown op {m.group(1)!r}; '
                                     f'allowed: {list(NB201_OPS)}')
                ops.append(m.group(1))
        return cls(tuple(ops))

    def to_dict(self) -> dict:
        return {'space': 'nb201', 'nb201_arch': str(self), 'ops': list(self.ops)}

    @classmethod
    def from_dict(cls, d: dict) -> 'NB201Genotype':
        if 'nb201_arch' not in d:
            raise ValueError('NB201 genotype JSON lacks "nb201_arch"')
        return cls.from_string(d['nb201_arch'])

    def count(self, ops: Sequence[str]) -> int:
        return sum(op in ops for op in self.ops)


def derive_nb201(logits, primitives: Sequence[str] = NB201_OPS, max_skip: int | None = None) -> NB201Genotype:
    """The strongest op of every edge, 'none' included (as the benchmark's DARTS/GDAS searches derive).

    max_skip: P-DARTS-style cap; while more edges than that hold skip_connect, the weakest of them
    takes its next-best op.
    """
    a = np.asarray(logits, np.float64)
    if a.shape != (len(EDGES), len(primitives)):
        raise ValueError(f'NB201 arch logits have shape {a.shape}, expected {(len(EDGES), len(primitives))}')
    if not np.all(np.isfinite(a)):
        raise ValueError('NB201 arch logits hold non-finite values')
    if max_skip is not None and max_skip < 0:
        raise ValueError(f'derive_nb201: max_skip={max_skip} must be >= 0 or None')
    a = a.copy()
    choice = a.argmax(-1)
    if max_skip is not None and 'skip_connect' in primitives:
        k = list(primitives).index('skip_connect')
        while (choice == k).sum() > max_skip:
            skips = np.flatnonzero(choice == k)
            weakest = skips[np.argmin(a[skips, k])]
            a[weakest, k] = -np.inf
            choice = a.argmax(-1)
    return NB201Genotype(tuple(primitives[i] for i in choice))


def random_nb201(rng: np.random.Generator, primitives: Sequence[str] = NB201_OPS) -> NB201Genotype:
    """A cell drawn uniformly from the space (each edge's op independently)."""
    return NB201Genotype(tuple(primitives[i] for i in rng.integers(0, len(primitives), len(EDGES))))
