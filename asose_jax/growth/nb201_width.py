"""Net2Wider of a NAS-Bench-201 search network: one stage's channels, function-preserving.

In a NAS-Bench-201 stage every tensor has the stage's C channels: the cells keep their input's width
(skip and pooling are channelwise), and the ResNet block that opens the stage writes C. So one channel
map per stage describes the whole widening: every conv of the stage replicates its output channels by
the stage's map and splits the weights of its input channels among their copies (`surgery.shares`) by
the map it reads (the previous stage's for a block's conv_a and shortcut); BN leaves replicate; the stem belongs to stage 0 and the
last BN and the classifier to the last stage.
"""
from __future__ import annotations

import dataclasses
import re

from asose_jax.growth.surgery import ChannelMap, Grown, Path, Transfer, rebuild, rep, rep_in
from asose_jax.space.spec import NetworkSpec


def _stage_of(spec: NetworkSpec, name: str) -> int | None:
    """The stage of a top-level module: 'cells3_4' and 'cell2' by their first cell's level."""
    m = re.fullmatch(r'cells?(\d+)(?:_\d+)?', name)
    return spec.levels[int(m.group(1))] if m else None


def widen_nb201(spec: NetworkSpec, variables: dict, opt_states: tuple, *, txs: tuple, stage: int,
                C_new: int, factor: float) -> Grown:
    """Every module of `stage` widened to C_new channels (the stem too for stage 0); `factor` is logged."""
    levels = spec.levels
    C = next(c.C for c, level in zip(spec.cells, levels) if level == stage)
    maps = {s: ChannelMap.identity(next(c.C for c, level in zip(spec.cells, levels) if level == s))
            for s in sorted(set(levels))}
    maps[stage] = ChannelMap.widen(C, C_new)
    cells = tuple(dataclasses.replace(c, C=C_new) if level == stage else c for c, level in zip(spec.cells, levels))
    new_spec = dataclasses.replace(spec, cells=cells, stem_C=C_new if stage == 0 else spec.stem_C)
    last = max(maps)

    def leaf_fn(path: Path):
        root = 2 if path[0] == 'params' else 1
        if path[0] == 'params' and path[1] == 'arch':
            return lambda x: x
        name, sub = path[root], path[root + 1:]
        out_map = maps[0] if name.startswith('stem') else maps[last] if name in ('lastact_bn', 'classifier') \
            else maps[_stage_of(spec, name)]
        if name == 'classifier':
            return (lambda x: rep_in(x, 0, out_map)) if sub == ('kernel',) else (lambda x: x)
        if sub[-1] != 'kernel':                               # BN scale, bias, mean, var
            return lambda x: rep(x, -1, out_map.idx)
        in_map = out_map
        if name == 'stem_conv':
            in_map = ChannelMap.identity(3)
        elif name.startswith('cell') and not name.startswith('cells') and sub[0] in ('conv_a', 'downsample'):
            in_map = maps[_stage_of(spec, name) - 1]           # a ResNet block reads the previous stage
        return lambda x: rep(rep_in(x, -2, in_map), -1, out_map.idx)

    event = {'kind': 'width', 'stage': stage, 'factor': factor, 'C_before': [C], 'C_after': [C_new]}
    return rebuild(new_spec, variables, opt_states, txs, lambda path: Transfer(path, leaf_fn(path)), event)
