"""Pictures of a genotype's normal and reduction cells (matplotlib, no display needed).

Each cell is drawn as a left-to-right DAG: inputs c_{k-2}, c_{k-1}, intermediate nodes 0..n-1,
output c_{k}; every chosen edge is an arrow labelled with its op, and dashed arrows mark the
nodes concatenated into c_{k}.
"""
from __future__ import annotations

import os
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from asose_jax.space.genotype import Edge, Genotype
from asose_jax.space.nb201_genotype import NB201Genotype
from asose_jax.space.nb201_genotype import EDGES as NB201_EDGES

OP_COLOURS = {
    'skip_connect': '#555555', 'max_pool_3x3': '#1f77b4', 'avg_pool_3x3': '#17becf',
    'sep_conv_3x3': '#d62728', 'sep_conv_5x5': '#ff7f0e', 'dil_conv_3x3': '#2ca02c',
    'dil_conv_5x5': '#9467bd', 'none': '#bbbbbb', 'nor_conv_1x1': '#2ca02c', 'nor_conv_3x3': '#d62728',
}


def node_positions(steps: int) -> dict[int | str, tuple[float, float]]:
    """State index (0, 1 inputs; 2.. intermediate) or 'out' -> (x, y); nodes zig-zag so edges
    that skip a node do not run through it."""
    pos: dict[int | str, tuple[float, float]] = {0: (0.0, 1.6), 1: (0.0, -1.6)}
    for i in range(steps):
        pos[2 + i] = (1.6 + 1.6 * i, 1.0 if i % 2 == 0 else -1.0)
    pos['out'] = (1.6 + 1.6 * steps, 0.0)
    return pos


def node_label(state: int | str) -> str:
    if state == 'out':
        return r'$c_{k}$'
    if state in (0, 1):
        return (r'$c_{k-2}$', r'$c_{k-1}$')[state]
    return str(state - 2)


def draw_cell(ax, edges: Sequence[Edge], concat: Sequence[int], title: str) -> None:
    """Draws one cell into a matplotlib Axes."""
    steps = len(edges) // 2
    pos = node_positions(steps)
    for state, (x, y) in pos.items():
        colour = '#c6dbef' if state in (0, 1) else '#fdd0a2' if state == 'out' else '#e5e5e5'
        ax.text(x, y, node_label(state), ha='center', va='center', fontsize=11, zorder=3,
                bbox=dict(boxstyle='round,pad=0.45', fc=colour, ec='black'))
    for e, (op, src) in enumerate(edges):
        dst = 2 + e // 2
        # the two edges of one node bend apart; long edges bend more so they clear the nodes between
        _edge(ax, pos[src], pos[dst], op, (0.2 if e % 2 == 0 else -0.2) * (1.0 if dst - src <= 2 else 1.5))
    for state in concat:
        ax.add_patch(FancyArrowPatch(pos[state], pos['out'], arrowstyle='-|>', mutation_scale=10, color='#888888',
                                     lw=1.0, ls='--', shrinkA=14, shrinkB=16, zorder=0))
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-2.4, 2.4)
    ax.set_aspect('equal')  # arc bends are computed in display space: keep it isotropic so labels sit on arcs
    ax.set_title(title)
    ax.set_axis_off()


def _edge(ax, p0, p1, op: str, rad: float) -> None:
    """An arrow from p0 to p1 bent by `rad`, labelled with its op at the arc's midpoint."""
    (x0, y0), (x1, y1) = p0, p1
    colour = OP_COLOURS.get(op, 'black')
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=f'arc3,rad={rad}', arrowstyle='-|>',
                                 mutation_scale=12, color=colour, lw=1.4, shrinkA=16, shrinkB=16, zorder=1))
    # arc3 bends by rad * chord length, perpendicular to it
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    lx, ly = mx + rad * (y1 - y0) / 2, my - rad * (x1 - x0) / 2
    ax.text(lx, ly, op, ha='center', va='center', fontsize=7, color=colour, zorder=2,
            bbox=dict(boxstyle='round,pad=0.15', fc='white', ec='none', alpha=0.85))


def draw_nb201_cell(ax, genotype: NB201Genotype, title: str) -> None:
    """The NAS-Bench-201 cell: node 0 (input) to node 3 (output), one labelled arrow per non-'none' edge."""
    pos = {0: (0.0, 0.0), 1: (1.6, 1.0), 2: (3.2, -1.0), 3: (4.8, 0.0)}
    for node, (x, y) in pos.items():
        colour = '#c6dbef' if node == 0 else '#fdd0a2' if node == 3 else '#e5e5e5'
        ax.text(x, y, str(node), ha='center', va='center', fontsize=11, zorder=3,
                bbox=dict(boxstyle='round,pad=0.45', fc=colour, ec='black'))
    for op, (dst, src) in zip(genotype.ops, NB201_EDGES):
        if op != 'none':
            _edge(ax, pos[src], pos[dst], op, 0.25 if dst - src > 1 else 0.1)
    ax.set_xlim(-0.8, 5.6)
    ax.set_ylim(-2.4, 2.4)
    ax.set_aspect('equal')
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def genotype_figure(genotype: Genotype | NB201Genotype, title: str = '') -> Figure:
    """A figure with the normal cell above the reduction cell (NAS-Bench-201: its one cell)."""
    if isinstance(genotype, NB201Genotype):
        fig = Figure(figsize=(7.0, 4.0))
        FigureCanvasAgg(fig)
        draw_nb201_cell(fig.subplots(1, 1), genotype, str(genotype) if not title else f'{title}\n{genotype}')
        fig.tight_layout()
        return fig
    fig = Figure(figsize=(1.6 * genotype.steps + 3.0, 8.0))
    FigureCanvasAgg(fig)
    ax_n, ax_r = fig.subplots(2, 1)
    draw_cell(ax_n, genotype.normal, genotype.normal_concat, 'normal cell')
    draw_cell(ax_r, genotype.reduce, genotype.reduce_concat, 'reduction cell')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_genotype_pictures(genotype: Genotype | NB201Genotype, directory: str, name: str = 'genotype', title: str = '',
                           formats: Sequence[str] = ('png', 'svg')) -> list[str]:
    """Writes directory/name.{png,svg}; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    fig = genotype_figure(genotype, title)
    paths = [os.path.join(directory, f'{name}.{fmt}') for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=120)
    return paths
