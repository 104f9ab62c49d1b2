"""Run report: `python -m asose_jax.report WORKDIR` writes WORKDIR/report/report.html and PNGs.

Reads only the run's files (metrics.jsonl, genotypes/*.json, genotype.json, summary.json), so it
works on a finished or a running search and needs no JAX. Pictures: training curves over the
global epoch with phases shaded and events marked, tau / entropy / health, per-op softmax weights,
arch-weight heatmaps (ops x edges) over epochs, and the cells of the final genotype.
"""
from __future__ import annotations

import argparse
import glob
import html
import importlib
import importlib.util
import json
import os
import re
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from asose_jax.space.genotype import Genotype  # noqa: E402

EVENT_COLORS = {'collapse_warning': '#d08000', 'monitor_action': '#b03030', 'growth': '#6a1b9a'}
PHASE_COLORS = {'warmup': '#fde2c8', 'search': '#d6e6f5', 'growth': '#e3d3ef', 'optimize': '#d9f0d3'}
GENOTYPE_FILE = re.compile(r'(?P<phase>\w+?)_epoch(?P<epoch>\d+)\.json$')


class ReportError(ValueError):
    """The workdir lacks what the report needs; the message names the file."""


def load_history(workdir: str) -> tuple[list[dict], list[dict]]:
    """(epoch records with a 'global_epoch' index added, event records placed after their epoch)."""
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        raise ReportError(f'{path} not found: is {workdir!r} a run workdir?')
    records, events = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReportError(f'{path} line {n} is not JSON: {e}') from e
            if 'event' in r:
                events.append({**r, 'global_epoch': r.get('global_epoch', len(records) - 1)})
            else:
                records.append({**r, 'global_epoch': len(records)})
    if not records:
        raise ReportError(f'{path} holds no epoch records')
    return records, events


def phase_spans(records: Sequence[dict]) -> list[tuple[str, int, int]]:
    """(phase, first global epoch, last global epoch) of each run of consecutive records of one phase."""
    spans = []
    for r in records:
        if spans and spans[-1][0] == r['phase']:
            spans[-1] = (r['phase'], spans[-1][1], r['global_epoch'])
        else:
            spans.append((r['phase'], r['global_epoch'], r['global_epoch']))
    return spans


def _values(records, key):
    xs = [r['global_epoch'] for r in records if key in r]
    return xs, [float(r[key]) for r in records if key in r]


def _decorate(ax, spans, events):
    """Shades the phases, marks the events, labels the x axis."""
    for phase, lo, hi in spans:
        ax.axvspan(lo - 0.5, hi + 0.5, color=PHASE_COLORS.get(phase, '#eeeeee'), alpha=0.7, lw=0)
    for e in events:
        ax.axvline(e['global_epoch'] + 0.5, color=EVENT_COLORS.get(e['event'], '#303030'), ls='--', lw=1)
    ax.set_xlabel('global epoch')
    ax.grid(alpha=0.3)


def _phase_legend(fig, spans, events):
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D
    handles = [Patch(color=PHASE_COLORS.get(p, '#eeeeee'), label=p) for p in dict.fromkeys(s[0] for s in spans)]
    kinds = sorted({e['event'] for e in events})
    handles += [Line2D([], [], color=EVENT_COLORS.get(k, '#303030'), ls='--', label=f'{k} (after that epoch)')
                for k in kinds]
    fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6), fontsize=8, frameon=False)


def plot_curves(records, events, path: str) -> str:
    """Loss, accuracy and learning rate against the global epoch, phases shaded, events marked."""
    spans = phase_spans(records)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [('loss', ('loss', 'val_loss', 'arch_loss')), ('accuracy', ('acc', 'val_acc', 'arch_acc')),
              ('learning rate', ('lr', 'arch_lr'))]
    for ax, (title, keys) in zip(axes, panels):
        _decorate(ax, spans, events)
        labelled = set()
        for i, key in enumerate(keys):
            for _, lo, hi in spans:  # no line across a phase boundary
                xs, ys = _values([r for r in records if lo <= r['global_epoch'] <= hi], key)
                if xs:
                    ax.plot(xs, ys, 'o-', ms=3, color=f'C{i}', label=key if key not in labelled else None)
                    labelled.add(key)
        if title == 'learning rate' and labelled:
            ax.set_yscale('log')
        ax.set_title(title)
        if labelled:
            ax.legend(fontsize=8)
    _phase_legend(fig, spans, events)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_search_stats(records, events, path: str) -> str:
    """tau, arch entropy per cell type, health, and parameter-free ops of the derived genotype."""
    spans = phase_spans(records)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [('tau (Gumbel temperature)', ('tau',)),
              ('arch entropy (nats)', ('entropy_normal', 'entropy_reduce', 'arch_entropy')),
              ('parameter-free ops in the derived cells', ('param_free_normal', 'param_free_reduce'))]
    searchlike = [r for r in records if r['phase'] != 'optimize']
    for ax, (title, keys) in zip(axes, panels):
        _decorate(ax, spans, events)
        for i, key in enumerate(keys):
            xs, ys = _values(searchlike, key)
            if xs:
                ax.plot(xs, ys, 'o-', ms=3, color=f'C{i}', label=key)
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc='upper left')
    xs, ys = _values(searchlike, 'health')
    if xs:  # health in [0, 1] on its own axis next to the counts
        twin = axes[2].twinx()
        twin.plot(xs, ys, 's--', ms=3, color='k', label='health (right axis)')
        twin.set_ylim(-0.05, 1.05)
        twin.legend(fontsize=8, loc='upper right')
    _phase_legend(fig, spans, events)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_op_weights(records, events, path: str) -> str | None:
    """Softmax weight of each op averaged over the edges, per cell type, against the global epoch."""
    keys = sorted({k for r in records for k in r if k.startswith('op_weight/')})
    if not keys:
        return None
    cells = list(dict.fromkeys(k.split('/')[1] for k in keys))
    spans = phase_spans(records)
    fig, axes = plt.subplots(1, len(cells), figsize=(7.5 * len(cells), 4.2), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        _decorate(ax, spans, events)
        for i, key in enumerate(k for k in keys if k.split('/')[1] == cell):
            xs, ys = _values(records, key)
            ax.plot(xs, ys, 'o-', ms=3, color=plt.cm.tab10(i % 10), label=key.split('/')[2])
        ax.set_title(f'{cell} cell: mean softmax weight per op')
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_alphas(workdir: str) -> list[dict]:
    """Per-epoch genotype files that hold softmaxed arch weights, in run order (warmup, search, ...)."""
    out = []
    for p in glob.glob(os.path.join(workdir, 'genotypes', '*.json')):
        m = GENOTYPE_FILE.search(os.path.basename(p))
        if not m:
            continue
        with open(p) as f:
            d = json.load(f)
        if 'alphas' in d:
            out.append({'phase': m['phase'], 'epoch': int(m['epoch']), 'alphas': d['alphas'],
                        'primitives': d['primitives'], 'genotype': d.get('string', '')})
    order = {'warmup': 0, 'search': 1}
    return sorted(out, key=lambda d: (order.get(d['phase'], 2), d['phase'], d['epoch']))


def edge_labels(num_edges: int) -> list[str]:
    """DARTS edge order: node i (shown as i+2) reads states 0..i+1; label 'src>dst'."""
    labels, node = [], 0
    while len(labels) < num_edges:
        labels += [f'{j}>{node + 2}' for j in range(node + 2)]
        node += 1
    return labels[:num_edges]


def plot_heatmaps(snapshots: Sequence[dict], path: str, max_columns: int = 5) -> str | None:
    """Arch weights (ops x edges) of evenly spaced epochs, one row per cell type."""
    if not snapshots:
        return None
    idx = sorted(set(np.linspace(0, len(snapshots) - 1, min(max_columns, len(snapshots))).round().astype(int)))
    chosen = [snapshots[i] for i in idx]
    cells = list(chosen[0]['alphas'])
    prims = chosen[0]['primitives']
    fig, axes = plt.subplots(len(cells), len(chosen), figsize=(3.6 * len(chosen) + 1.5, 3.0 * len(cells)),
                             squeeze=False, layout='constrained')
    # one colour scale for all panels, spanning the data: early weights all sit near 1/K
    vmin = min(float(np.min(s['alphas'][c])) for s in chosen for c in cells)
    vmax = max(float(np.max(s['alphas'][c])) for s in chosen for c in cells)
    image = None
    for col, snap in enumerate(chosen):
        for row, cell in enumerate(cells):
            a = np.asarray(snap['alphas'][cell]).T  # ops x edges
            ax = axes[row][col]
            image = ax.imshow(a, aspect='auto', cmap='viridis', vmin=vmin, vmax=vmax)
            ax.set_xticks(range(a.shape[1]), edge_labels(a.shape[1]), rotation=90, fontsize=6)
            ax.set_yticks(range(a.shape[0]), prims if col == 0 else [''] * len(prims), fontsize=7)
            ax.set_title(f"{cell} | {snap['phase']} ep {snap['epoch']}", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label='softmax weight')
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def final_genotype(workdir: str, snapshots: Sequence[dict]) -> Genotype | None:
    path = os.path.join(workdir, 'genotype.json')
    if os.path.exists(path):
        with open(path) as f:
            return Genotype.from_dict(json.load(f))
    return Genotype.from_string(snapshots[-1]['genotype']) if snapshots else None


def cell_listing(g: Genotype) -> str:
    """Plain-text cells: one line per intermediate node with its two (op, input) edges."""
    names = lambda j: {0: 'c_{k-2}', 1: 'c_{k-1}'}.get(j, f'node {j - 2}')  # noqa: E731
    lines = []
    for cell in ('normal', 'reduce'):
        edges = getattr(g, cell)
        lines.append(f'{cell} cell (output = concat of nodes {[i - 2 for i in getattr(g, cell + "_concat")]}):')
        for node in range(len(edges) // 2):
            pair = edges[2 * node:2 * node + 2]
            lines.append(f'  node {node} = ' + ' + '.join(f'{op}({names(j)})' for op, j in pair))
    return '\n'.join(lines)


def draw_cells(g: Genotype, out_dir: str) -> tuple[list[str], str]:
    """Cell pictures from asose_jax.report.visualize (`save_genotype_pictures`, normal above reduction)
    when that module exists; the plain-text listing always (cells.txt, and in the HTML)."""
    text = cell_listing(g)
    with open(os.path.join(out_dir, 'cells.txt'), 'w') as f:
        f.write(text + '\n')
    if importlib.util.find_spec('asose_jax.report.visualize') is None:
        return [], text
    visualize = importlib.import_module('asose_jax.report.visualize')
    return list(visualize.save_genotype_pictures(g, out_dir, name='cells', title='final genotype',
                                                 formats=('png',))), text


def _table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in header)
    body = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>' for row in rows)
    return f'<table><tr>{head}</tr>{body}</table>'


def _fmt(v, spec='.4f'):
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def _mean_finite(values) -> float | str:
    v = [float(x) for x in values if np.isfinite(float(x))]
    return float(np.mean(v)) if v else ''


def phase_rows(records) -> list[list]:
    rows = []
    for phase, lo, hi in phase_spans(records):
        rs = [r for r in records if lo <= r['global_epoch'] <= hi]
        best = max(rs, key=lambda r: float(r.get('val_acc', float('-inf'))))
        rows.append([phase, f'{lo}-{hi}', len(rs), _fmt(rs[-1].get('loss')), _fmt(rs[-1].get('val_acc')),
                     f"{_fmt(best.get('val_acc'))} (epoch {best.get('epoch')})",
                     _fmt(_mean_finite(r.get('images_per_sec', 'nan') for r in rs), '.1f'),
                     _fmt(rs[-1].get('health', ''), '.2f') if 'health' in rs[-1] else ''])
    return rows


def event_rows(events) -> list[list]:
    rows = []
    for e in events:
        detail = {k: v for k, v in e.items() if k not in ('event', 'global_epoch', 'phase', 'epoch', 'reason')}
        rows.append([e['global_epoch'], e.get('phase', ''), e.get('epoch', ''), e['event'],
                     e.get('action', ''), e.get('reason', ''), json.dumps(detail, sort_keys=True)[:300]])
    return rows


def render(workdir: str) -> str:
    """Writes WORKDIR/report/report.html and its PNGs; returns the HTML path."""
    records, events = load_history(workdir)
    out = os.path.join(workdir, 'report')
    os.makedirs(out, exist_ok=True)
    snapshots = load_alphas(workdir)
    pictures = [('Training curves (phases shaded, events dashed)', plot_curves(records, events, f'{out}/curves.png')),
                ('Search statistics', plot_search_stats(records, events, f'{out}/search_stats.png')),
                ('Op weights per cell type', plot_op_weights(records, events, f'{out}/op_weights.png')),
                ('Arch weights, ops x edges, over epochs', plot_heatmaps(snapshots, f'{out}/arch_heatmaps.png'))]
    g = final_genotype(workdir, snapshots)
    cell_pngs, cell_text = draw_cells(g, out) if g is not None else ([], 'no genotype found')
    summary = {}
    if os.path.exists(os.path.join(workdir, 'summary.json')):
        with open(os.path.join(workdir, 'summary.json')) as f:
            summary = json.load(f)
    parts = [f'<h1>asose_jax run: {html.escape(os.path.abspath(workdir))}</h1>']
    if summary:
        parts.append(f"<p>final val_acc <b>{_fmt(summary.get('val_acc'))}</b>, wall "
                     f"{_fmt(summary.get('wall_s'), '.0f')} s</p>")
    parts.append('<h2>Phases</h2>' + _table(phase_rows(records), ['phase', 'global epochs', 'epochs', 'last loss',
                                                                  'last val_acc', 'best val_acc', 'images/s',
                                                                  'health']))
    parts.append('<h2>Events</h2>' + (_table(event_rows(events), ['global epoch', 'phase', 'epoch', 'event', 'action',
                                                                  'reason', 'details'])
                                      if events else '<p>none (no growth, monitor action or collapse warning)</p>'))
    for title, p in pictures:
        if p:
            parts.append(f'<h2>{html.escape(title)}</h2><img src="{os.path.basename(p)}">')
        else:
            parts.append(f'<h2>{html.escape(title)}</h2><p>not in this run\'s files</p>')
    parts.append('<h2>Final genotype</h2>')
    parts += [f'<img src="{html.escape(os.path.relpath(p, out))}">' for p in cell_pngs]
    parts.append(f'<pre>{html.escape(cell_text)}</pre><pre>{html.escape(str(g))}</pre>')
    style = ('<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}'
             'td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{max-width:100%}</style>')
    path = os.path.join(out, 'report.html')
    with open(path, 'w') as f:
        f.write(f'<!doctype html><html><head><meta charset="utf-8"><title>asose_jax report</title>{style}</head>'
                f'<body>{"".join(parts)}</body></html>')
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m asose_jax.report', description=__doc__.splitlines()[0])
    parser.add_argument('workdir', help='a run folder written by asose_jax.train')
    args = parser.parse_args(argv)
    print(render(args.workdir))

