"""Frozen structure description of a search network; the thing growth rewrites and checkpoints store.

The spec is static (hashable) so that jitted steps are compiled once per spec.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from asose_jax.space.genotype import PRIMITIVES, num_edges
from asose_jax.space.nb201_genotype import NB201_OPS
from asose_jax.space.nb201_genotype import EDGES as NB201_EDGES

SPACES = {'darts': PRIMITIVES, 'nb201': NB201_OPS}  # search space -> the ops it allows


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """One cell of the stack.

    C: channels of each intermediate node (the cell outputs multiplier * C).
    residual: a cell inserted by growth; its output is added to its c_{k-1} input through a
      zero-initialised BN scale, and it does not shift the (c_{k-2}, c_{k-1}) chain.
    attention: hidden units of a squeeze-excite gate 2*sigmoid(fc2(relu(fc1(mean(x))))) on the
      cell output (0 = none); fc2 starts at zero, so the gate starts as the identity. Fixed at
      insertion, so a later widen only changes the gate's input and output widths.
    """

    C: int
    reduction: bool = False
    residual: bool = False
    attention: int = 0


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A search network: stem, a stack of cells, global pool, classifier.

    space 'darts': DARTS cells (two inputs, `steps` nodes, reductions are search cells too).
    space 'nb201': NAS-Bench-201 cells (one input, 3 nodes, 6 edges, all cells share one logits
    array); a `reduction` cell is the benchmark's fixed ResNet basic block (stride 2).
    """

    cells: tuple[CellSpec, ...]
    stem_C: int
    num_classes: int = 10
    steps: int = 4
    multiplier: int = 4
    primitives: tuple[str, ...] = PRIMITIVES
    branch_ops: tuple[str, ...] = ()      # primitives added by growth: each output scaled by a zero-init gate
    drop_path: float = 0.0                # per-edge drop-path in train mode (regularise growth)
    dropout: float = 0.0                  # before the classifier in train mode
    growth_history: tuple[str, ...] = ()  # JSON strings, one per growth event (hashable)
    space: str = 'darts'

    def __post_init__(self):
        object.__setattr__(self, 'cells', tuple(
            c if isinstance(c, CellSpec) else CellSpec(**c) for c in self.cells))
        object.__setattr__(self, 'primitives', tuple(self.primitives))
        object.__setattr__(self, 'branch_ops', tuple(self.branch_ops))
        object.__setattr__(self, 'growth_history', tuple(self.growth_history))
        if self.space not in SPACES:
            raise ValueError(f'model.space={self.space!r}; allowed: {list(SPACES)}')
        unknown = [p for p in self.primitives if p not in SPACES[self.space]]
        if unknown:
            raise ValueError(f'model.primitives: unknown ops {unknown} for space {self.space!r}; '
                             f'allowed: {list(SPACES[self.space])}')
        if len(set(self.primitives)) != len(self.primitives):
            raise ValueError(f'model.primitives: duplicates in {list(self.primitives)}')
        stray = [p for p in self.branch_ops if p not in self.primitives]
        if stray:
            raise ValueError(f'branch_ops {stray} are not in primitives {list(self.primitives)}')
        for name in ('drop_path', 'dropout'):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f'{name}={getattr(self, name)}: need a rate in [0, 1)')
        if not self.cells:
            raise ValueError('a network needs at least one cell')
        if self.steps < 1 or not 1 <= self.multiplier <= self.steps:
            raise ValueError(f'steps={self.steps}, multiplier={self.multiplier}: need 1 <= multiplier <= steps')
        for i, c in enumerate(self.cells):
            if c.C < 1:
                raise ValueError(f'cell {i}: C must be >= 1, got {c.C}')
            if c.attention < 0:
                raise ValueError(f'cell {i}: attention (hidden units) must be >= 0, got {c.attention}')
            if c.residual and c.reduction:
                raise ValueError(f'cell {i}: a residual cell cannot reduce')

    @classmethod
    def darts(cls, C: int = 16, layers: int = 8, num_classes: int = 10, steps: int = 4,
              multiplier: int = 4, stem_multiplier: int = 3,
              primitives: Sequence[str] = PRIMITIVES) -> 'NetworkSpec':
        """The DARTS layout: reductions at layers//3 and 2*layers//3, channels doubled there."""
        if layers < 1:
            raise ValueError(f'model.layers must be >= 1, got {layers}')
        cells, c = [], C
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c *= 2
            cells.append(CellSpec(C=c, reduction=reduction))
        return cls(cells=tuple(cells), stem_C=stem_multiplier * C, num_classes=num_classes,
                   steps=steps, multiplier=multiplier, primitives=tuple(primitives))

    @classmethod
    def nb201(cls, C: int = 16, cells_per_stage: int = 5, num_classes: int = 10,
              primitives: Sequence[str] = NB201_OPS) -> 'NetworkSpec':
        """The NAS-Bench-201 macro network: stem (C), three stages of N cells at C, 2C, 4C, a ResNet
        basic block (stride 2) between stages."""
        if cells_per_stage < 1:
            raise ValueError(f'model.cells_per_stage must be >= 1, got {cells_per_stage}')
        cells = []
        for stage in range(3):
            if stage:
                cells.append(CellSpec(C=C * 2 ** stage, reduction=True))
            cells += [CellSpec(C=C * 2 ** stage)] * cells_per_stage
        return cls(cells=tuple(cells), stem_C=C, num_classes=num_classes, steps=len(NB201_EDGES) // 2,
                   multiplier=1, primitives=tuple(primitives), space='nb201')

    @property
    def num_edges(self) -> int:
        return len(NB201_EDGES) if self.space == 'nb201' else num_edges(self.steps)

    @property
    def cell_types(self) -> tuple[str, ...]:
        """The arch logits' keys: one [edges, ops] array per cell type."""
        return ('cell',) if self.space == 'nb201' else ('normal', 'reduce')

    @property
    def num_ops(self) -> int:
        return len(self.primitives)

    @property
    def layers(self) -> int:
        return len(self.cells)

    @property
    def levels(self) -> tuple[int, ...]:
        """Stage of each cell: the number of reductions up to and including it."""
        out, n = [], 0
        for c in self.cells:
            n += int(c.reduction)
            out.append(n)
        return tuple(out)

    @property
    def has_reduction(self) -> bool:
        return any(c.reduction for c in self.cells)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d['growth_history'] = [json.loads(g) for g in self.growth_history]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'NetworkSpec':
        d = dict(d)
        d['cells'] = tuple(CellSpec(**c) for c in d['cells'])
        d['growth_history'] = tuple(json.dumps(g, sort_keys=True) for g in d.get('growth_history', ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> 'NetworkSpec':
        return cls.from_dict(json.loads(text))

    def with_growth(self, event: dict, **changes) -> 'NetworkSpec':
        """A new spec with `changes` applied and `event` appended to the growth history."""
        history = self.growth_history + (json.dumps(event, sort_keys=True),)
        return dataclasses.replace(self, growth_history=history, **changes)
