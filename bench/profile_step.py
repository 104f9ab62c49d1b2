"""Where a compiled search step spends its time: a jax.profiler trace of a few steps, XLA's leaf
ops summed by kind (copy, dynamic-slice fusion, convolution, ...).

    python bench/profile_step.py --shape smoke --path hard --depthwise shift [--variant remat_branch] [--step arch]
        [--by-source | --by-instruction]

Times are summed over the runtime's threads (independent ops run in parallel), so the shares say
where the work goes, not the wall time; a loop fusion that XLA splits over the cores is one event of
its wall time. The 'one thread' column is the time of the loop fusions that compiled HLO leaves unsplit
(no `outer_dimension_partitions`), which the other cores cannot help with: it found the mixture's edge
input gradients computed inside the edge loops' dynamic-update-slices (`model.materialize_edge_grads`).
"Cores busy" is the process's CPU time over the wall time. This is how the single path's zero-filled branch residuals
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


def unsplit_loop_fusions(hlo_text: str) -> set:
    """Names of the loop fusions that compiled HLO leaves without `outer_dimension_partitions`: XLA's CPU
    runtime runs each of them on one thread (no dynamic-update-slice fusion got partitions in the search steps). A partitioned
    fusion shows as one trace event too, so the trace alone cannot tell them apart."""
    return {m.group(1) for m in re.finditer(INSTRUCTION + r'.*kind=kLoop(.*)$', hlo_text, re.M)
            if 'outer_dimension_partitions' not in m.group(2)}


def op_kinds(events: list, sources: dict | None = None, shapes: dict | None = None,
             unsplit: set = frozenset()) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """Microseconds, microseconds in `unsplit` instructions (one-thread loop fusions, `unsplit_loop_fusions`)
    and counts per op kind (the HLO name without its numeric suffix), or, given `sources` (instruction name ->
    source op, `op_sources`), per (kind, source op), or, given `shapes` (instruction name -> result shape,
    `instruction_shapes`), per instruction."""
    us, one_thread, n = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        kind = re.sub(r'[._]\d+$', '', e['name'])
        if shapes is not None:
            kind = f"{e['name']} {shapes.get(e['name'], '?')}"
        elif sources is not None:
            kind = f"{kind} <- {sources.get(e['name'], '?')}"
        us[kind] += e.get('dur', 0)
        one_thread[kind] += e.get('dur', 0) if e['name'] in unsplit else 0
        n[kind] += 1
    return us, one_thread, n


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
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        state, m = comp.fn(state, b, key)
    jax.block_until_ready(m)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    jax.profiler.stop_trace()
    text = comp.fn.as_text()
    us, one_thread, n = op_kinds(leaf_events(trace_dir), op_sources(text) if args.by_source else None,
                                 instruction_shapes(text) if args.by_instruction else None, unsplit_loop_fusions(text))
    total = sum(us.values())
    out = [f'### Step profile ({time.strftime("%Y-%m-%d %H:%M")})', '',
           C.machine() + f'; shape {args.shape}, {args.step} step, {args.path} path, {args.variant}, '
           f'depthwise {depthwise}, pointwise {args.pointwise}; '
           f'{args.steps} steps, {bs * args.steps / wall:.1f} img/s while profiled; op time summed over threads: '
           f'{total / 1e3 / args.steps:.1f} ms/step; process CPU time {cpu / wall:.2f}x the wall time (cores busy); '
           f'one-thread loop fusions {100 * sum(one_thread.values()) / total:.0f}% of the op time', '',
           '| op kind | ms/step | share | one thread ms/step | per step |', '|---|---|---|---|---|']
    out += [f'| {k} | {d / 1e3 / args.steps:.2f} | {100 * d / total:.1f}% | {one_thread[k] / 1e3 / args.steps:.2f} | '
            f'{n[k] // args.steps} |' for k, d in us.most_common(args.top)]
    C.report(out, None)


if __name__ == '__main__':
    main()
