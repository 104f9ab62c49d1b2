"""Where a compiled search step spends its time: a jax.profiler trace of a few steps, XLA's leaf
ops summed by kind (copy, dynamic-slice fusion, convolution, ...).

    python bench/profile_step.py --shape smoke --path hard --depthwise shift [--variant remat_branch] [--step arch]
        [--by-source | --by-instruction]

Times are summed over the runtime's threads (independent ops run in parallel), so the shares say
where the work goes, not the wall time. The 'alone' column is the time each kind ran as the only op on
any thread: that is wall time the other cores sat idle for (on the 2-core CPU, the mixture's
dynamic-update-slice fusions run alone all the time). This is how the single path's zero-filled branch residuals
were found (copies and dynamic-slice fusions ~72% on the CPU; `model.remat_branch`), and, with
--by-source, the edge scans' residual copies and whole-array gradient updates (`model.unroll_edges`);
with --by-instruction (each HLO instruction with its result shape), the mixture's input gradients fused
into the edge loops' dynamic-update-slices (`bench/bench_scan_update.py`).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import _common as C  # noqa: E402

INSTRUCTION = r'^\s*(?:ROOT )?%?([\w.\-]+) = '  # a compiled-HLO line up to its result shape; group 1: the name
CONTAINERS = ('$', 'Thunk', 'Pjit', 'Common', 'cond', 'while', 'end: ')  # python frames, ops holding ops, end markers


def leaf_events(trace_dir: str) -> list:
    """The trace's leaf op events (complete events that are not Python frames or op containers)."""
    path = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True))[-1]
    events = json.load(gzip.open(path))
    events = events['traceEvents'] if isinstance(events, dict) else events
    return [e for e in events if e.get('ph') == 'X' and not e['name'].startswith(CONTAINERS)]


def concurrency(events: list) -> tuple[list, collections.Counter]:
    """Per event, the microseconds during which it was the only op running on any thread, and the
    microseconds of the traced span with 0, 1 and 2+ ops running. Why: XLA's CPU runtime runs some
    fusions (e.g. a loop's dynamic-update-slice with its update computed inside) on one thread, which
    leaves the other cores idle; summed op time does not show that."""
    points = sorted([(e['ts'], 1, i) for i, e in enumerate(events)]
                    + [(e['ts'] + e.get('dur', 0), -1, i) for i, e in enumerate(events)])  # ends first on ties
    alone, running, cover = [0.0] * len(events), set(), collections.Counter()
    last = points[0][0] if points else 0
    for t, change, i in points:
        if t > last:
            cover[min(len(running), 2)] += t - last
            if len(running) == 1:
                alone[next(iter(running))] += t - last
        last = t
        (running.add if change == 1 else running.discard)(i)
    return alone, cover


def op_kinds(events: list, sources: dict | None = None,
             shapes: dict | None = None) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """Microseconds, microseconds alone (the only op running, `concurrency`) and counts per op kind (the
    HLO name without its numeric suffix), or, given `sources` (instruction name -> source op,
    `op_sources`), per (kind, source op), or, given `shapes` (instruction name -> result shape,
    `instruction_shapes`), per instruction."""
    us, alone_us, n = collections.Counter(), collections.Counter(), collections.Counter()
    alone, _ = concurrency(events)
    for e, a in zip(events, alone):
        kind = re.sub(r'[._]\d+$', '', e['name'])
        if shapes is not None:
            kind = f"{e['name']} {shapes.get(e['name'], '?')}"
        elif sources is not None:
            kind = f"{kind} <- {sources.get(e['name'], '?')}"
        us[kind] += e.get('dur', 0)
        alone_us[kind] += a
        n[kind] += 1
    return us, alone_us, n


def op_sources(hlo_text: str) -> dict:
    """Instruction name -> the JAX op it came from: forward or backward ('T', a transpose) and the last
    three parts of its op_name metadata (e.g. 'T sep_conv_5x5/op1/dw/...'), from compiled HLO text."""
    out = {}
    for m in re.finditer(INSTRUCTION + r'.*?metadata=\{op_name="([^"]*)"', hlo_text, re.M):
        name = m.group(2)
        out[m.group(1)] = ('T ' if 'transpose(' in name else 'F ') + '/'.join(name.split('/')[-3:])
    return out


def instruction_shapes(hlo_text: str) -> dict:
    """Instruction name -> its result shape (e.g. 'f32[8,64,32,32,32]'), from compiled HLO text."""
    return {m.group(1): m.group(2) for m in re.finditer(INSTRUCTION + r'(\S+)', hlo_text, re.M)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--shape', default='smoke')
    p.add_argument('--path', default='hard')
    p.add_argument('--variant', default='fp32')
    p.add_argument('--depthwise', default='auto')
    p.add_argument('--pointwise', default='conv', help="1x1 convs: 'conv' or 'dot' (model.pointwise_impl)")
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--top', type=int, default=15)
    p.add_argument('--step', default='weight', choices=('weight', 'arch'))
    rows = p.add_mutually_exclusive_group()
    rows.add_argument('--by-source', action='store_true',
                      help='split each op kind by the JAX op it came from (HLO op_name metadata)')
    rows.add_argument('--by-instruction', action='store_true',
                      help='one row per HLO instruction, with its result shape')
    args = p.parse_args()
    spec, bs, size = C.shape_spec(args.shape)
    depthwise = C.depthwise_for(args.depthwise)
    _, wtx, atx, state = C.make_state(spec, size)
    b, key = C.batch(bs, size), jax.random.key(1)
    cfg = C.step_config(args.path, args.variant, depthwise, args.pointwise)
    comp = C.compile_step(C.search_step(spec, cfg, wtx, atx, args.step), state, b, key)
    for _ in range(2):
        state, m = comp.fn(state, b, key)
    jax.block_until_ready(m)
    trace_dir = tempfile.mkdtemp(prefix='profile_step_')
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, m = comp.fn(state, b, key)
    jax.block_until_ready(m)
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    text = comp.fn.as_text()
    events = leaf_events(trace_dir)
    us, alone, n = op_kinds(events, op_sources(text) if args.by_source else None,
                            instruction_shapes(text) if args.by_instruction else None)
    _, cover = concurrency(events)
    total, span = sum(us.values()), sum(cover.values()) or 1
    out = [f'### Step profile ({time.strftime("%Y-%m-%d %H:%M")})', '',
           C.machine() + f'; shape {args.shape}, {args.step} step, {args.path} path, {args.variant}, '
           f'depthwise {depthwise}, pointwise {args.pointwise}; '
           f'{args.steps} steps, {bs * args.steps / wall:.1f} img/s while profiled; op time summed over threads: '
           f'{total / 1e3 / args.steps:.1f} ms/step, {total / 1e6 / wall:.2f}x the wall time (cores busy); '
           f'of the traced span, no op running {100 * cover[0] / span:.0f}%, one {100 * cover[1] / span:.0f}%, '
           f'two or more {100 * cover[2] / span:.0f}%', '',
           '| op kind | ms/step | share | alone ms/step | per step |', '|---|---|---|---|---|']
    out += [f'| {k} | {d / 1e3 / args.steps:.2f} | {100 * d / total:.1f}% | {alone[k] / 1e3 / args.steps:.2f} | '
            f'{n[k] // args.steps} |' for k, d in us.most_common(args.top)]
    C.report(out, None)


if __name__ == '__main__':
    main()
