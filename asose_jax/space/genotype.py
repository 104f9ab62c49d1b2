"""Discrete cell descriptions (genotypes) and their derivation from arch logits.

numpy only, so that host-side tools (report, evaluate, parity) can use it without JAX.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import re
from typing import Sequence

import numpy as np

PRIMITIVES: tuple[str, ...] = (
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5',
)
PARAMETER_FREE = frozenset({'none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect'})


def num_edges(steps: int) -> int:
    """Edges of a cell with `steps` intermediate nodes (2 + 3 + ... = 14 for 4)."""
    return sum(2 + i for i in range(steps))


Edge = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A discrete cell pair: each node takes two (op, input index) edges.

    Input index 0 and 1 are the cell inputs (c_{k-2}, c_{k-1}); j >= 2 is intermediate node j-2.
    """

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self):
        for name in ('normal', 'reduce'):
            edges = tuple((str(op), int(j)) for op, j in getattr(self, name))
            object.__setattr__(self, name, edges)
            for op, _ in edges:
                if op not in PRIMITIVES:
                    raise ValueError(f'Genotype.{name}: unknown op {op!r}; allowed: {list(PRIMITIVES)}')
            if len(edges) % 2:
                raise ValueError(f'Genotype.{name}: needs two edges per node, got {len(edges)} edges')
            for i, (_, j) in enumerate(edges):
                if not 0 <= j < 2 + i // 2:
                    raise ValueError(f'Genotype.{name}: edge {i} reads input {j}, which does not exist yet')
        for name in ('normal_concat', 'reduce_concat'):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def __str__(self) -> str:
        return (f'Genotype(normal={list(self.normal)}, normal_concat={list(self.normal_concat)}, '
                f'reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)})')

    @classmethod
    def from_string(cls, text: str) -> 'Genotype':
        """Parses `str(genotype)` and the DARTS repository's notation (`range(2, 6)` concat)."""
        text = text.strip()
        match = re.fullmatch(r'Genotype\((.*)\)', text, flags=re.S)
        if not match:
            raise ValueError(f'not a Genotype string: {text[:80]!r}')
        body = re.sub(r'range\((\d+)\s*,\s*(\d+)\)',
                      lambda m: str(list(range(int(m.group(1)), int(m.group(2))))), match.group(1))
        try:
            call = ast.parse(f'f({body})', mode='eval').body
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except (SyntaxError, ValueError) as e:
            raise ValueError(f'cannot parse Genotype string: {e}') from e
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return {'normal': [list(e) for e in self.normal], 'normal_concat': list(self.normal_concat),
                'reduce': [list(e) for e in self.reduce], 'reduce_concat': list(self.reduce_concat)}

    @classmethod
    def from_dict(cls, d: dict) -> 'Genotype':
        missing = {'normal', 'normal_concat', 'reduce', 'reduce_concat'} - set(d)
        if missing:
            raise ValueError(f'genotype JSON lacks {sorted(missing)}')
        return cls(normal=tuple(map(tuple, d['normal'])), normal_concat=tuple(d['normal_concat']),
                   reduce=tuple(map(tuple, d['reduce'])), reduce_concat=tuple(d['reduce_concat']))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> 'Genotype':
        return cls.from_dict(json.loads(text))

    def count(self, ops: Sequence[str]) -> int:
        """How many edges (both cells) use one of `ops`."""
        return sum(op in ops for op, _ in self.normal + self.reduce)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _parse_cell(weights: np.ndarray, steps: int, primitives: Sequence[str]) -> tuple[Edge, ...]:
    """DARTS `_parse`: per node keep the 2 incoming edges whose best non-none op is strongest."""
    non_none = [k for k, p in enumerate(primitives) if p != 'none']
    edges, start = [], 0
    for i in range(steps):
        end = start + 2 + i
        w = weights[start:end]
        strength = [max(w[j][k] for k in non_none) for j in range(2 + i)]
        # stable sort: ties go to the lower input index, like Python's sorted in DARTS.
        top = sorted(range(2 + i), key=lambda j: -strength[j])[:2]
        for j in top:
            k_best = max(non_none, key=lambda k: (w[j][k], -k))
            edges.append((primitives[k_best], j))
        start = end
    return tuple(edges)


def derive(alphas_normal, alphas_reduce, steps: int = 4, multiplier: int = 4,
           primitives: Sequence[str] = PRIMITIVES, max_skip: int | None = None) -> Genotype:
    """Derives the discrete genotype from arch logits [edges, ops] as DARTS does (softmax first).

    max_skip: P-DARTS cap against skip-connect collapse. While the normal cell holds more than
    `max_skip` skip_connects, the weakest kept skip (lowest softmax weight) is struck out of its
    edge and the cell re-derived, so that edge falls back to its next-best op or loses its place
    to the next-best edge. None = no cap (DARTS). The reduction cell is never capped.
    """
    if max_skip is not None and max_skip < 0:
        raise ValueError(f'derive: max_skip={max_skip} must be >= 0 or None')
    if max_skip is not None and not set(primitives) - {'none', 'skip_connect'}:
        raise ValueError(f'derive: max_skip needs an op other than none/skip_connect to fall back to; got {primitives}')
    weights = {}
    for name, a in (('normal', alphas_normal), ('reduce', alphas_reduce)):
        a = np.asarray(a)
        if a.shape != (num_edges(steps), len(primitives)):
            raise ValueError(f'alphas_{name} has shape {a.shape}, expected {(num_edges(steps), len(primitives))}')
        if not np.all(np.isfinite(a)):
            raise ValueError(f'alphas_{name} holds non-finite values')
        weights[name] = _softmax(a)
    normal = _parse_cell(weights['normal'], steps, primitives)
    if max_skip is not None and 'skip_connect' in primitives:
        k_skip, w = list(primitives).index('skip_connect'), weights['normal'].copy()
        while sum(op == 'skip_connect' for op, _ in normal) > max_skip:
            kept = [row for row, (op, _) in zip(_edge_rows(normal, steps), normal) if op == 'skip_connect']
            w[min(kept, key=lambda e: w[e, k_skip]), k_skip] = -1.0  # below every softmax weight: never chosen
            normal = _parse_cell(w, steps, primitives)
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=normal, normal_concat=concat,
                    reduce=_parse_cell(weights['reduce'], steps, primitives), reduce_concat=concat)


def random_genotype(rng: np.random.Generator, steps: int = 4, multiplier: int = 4,
                    primitives: Sequence[str] = PRIMITIVES) -> Genotype:
    """A genotype drawn uniformly from what `derive` can return: per node two distinct inputs, each edge
    an op other than 'none'; both cells drawn independently."""
    ops = [p for p in primitives if p != 'none']

    def cell():
        edges = []
        for i in range(steps):
            for j in sorted(rng.choice(2 + i, size=2, replace=False)):
                edges.append((ops[rng.integers(len(ops))], int(j)))
        return tuple(edges)
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=concat)


def derive_arch(arch, space: str = 'darts', steps: int = 4, multiplier: int = 4,
                primitives: Sequence[str] | None = None, max_skip: int | None = None):
    """The discrete genotype of arch logits in either space: DARTS ({'normal', 'reduce'}, `derive`) or
    NAS-Bench-201 ({'cell'}, `nb201_genotype.derive_nb201`)."""
    from asose_jax.space.nb201_genotype import derive_nb201  # noqa: PLC0415 (nb201_genotype is a sibling leaf)
    kw = {} if primitives is None else {'primitives': tuple(primitives)}
    if space == 'nb201':
        return derive_nb201(arch['cell'], max_skip=max_skip, **kw)
    return derive(arch['normal'], arch['reduce'], steps, multiplier, max_skip=max_skip, **kw)


@functools.cache
def named_genotype_info() -> dict[str, dict]:
    """Published cells shipped as package data (named_genotypes.json): genotype dict, citation, figures."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'named_genotypes.json')) as f:
        return json.load(f)


def named_genotypes() -> dict[str, Genotype]:
    return {name: Genotype.from_dict(d) for name, d in named_genotype_info().items()}


def genotype_from_dict(d: dict):
    """A DARTS Genotype or, for a dict holding `nb201_arch`, a NAS-Bench-201 cell."""
    from asose_jax.space.nb201_genotype import NB201Genotype  # noqa: PLC0415 (sibling leaf module)
    return NB201Genotype.from_dict(d) if 'nb201_arch' in d else Genotype.from_dict(d)


def load_genotype(arg: str):
    """A genotype from a published name (case-insensitive), a JSON file (genotype.json of a search
    workdir), a `Genotype(...)` string, or a NAS-Bench-201 arch string (`|op~0|+|...|`). Anything else
    is an error that lists the known names."""
    from asose_jax.space.nb201_genotype import NB201Genotype  # noqa: PLC0415
    arg = str(arg).strip()
    names = named_genotype_info()
    known = (f'known names: {sorted(names)}; or a genotype JSON file, a Genotype(...) string or a '
             'NAS-Bench-201 arch string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|')
    by_lower = {n.lower(): n for n in names}
    if arg.lower() in by_lower:
        return Genotype.from_dict(names[by_lower[arg.lower()]])
    if arg.startswith('|'):
        return NB201Genotype.from_string(arg)  # its errors name the malformed part
    if arg.startswith('Genotype('):
        try:
            return Genotype.from_string(arg)
        except (ValueError, TypeError) as e:
            raise ValueError(f'malformed genotype string: {e}; {known}') from e
    if os.path.isfile(arg):
        try:
            with open(arg) as f:
                return genotype_from_dict(json.load(f))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f'genotype file {arg!r} is not a genotype JSON: {e}; {known}') from e
    raise ValueError(f'genotype {arg!r} is neither a known name nor an existing file nor a Genotype(...) '
                     f'string; {known}')


def _edge_rows(cell: Sequence[Edge], steps: int) -> list[int]:
    """Row of the alphas array (DARTS edge order) that each kept (op, input) edge of a cell came from."""
    return [sum(2 + t for t in range(i // 2)) + j for i, (_, j) in enumerate(cell)]
