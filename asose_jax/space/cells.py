"""Cells: the mixed op of the search space, the search cell, and the fixed (derived) cell."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from asose_jax.space.genotype import Genotype
from asose_jax.space.ops import FactorizedReduce, ReLUConvBN, make_op


class MixedOp(nn.Module):
    """sum_k w_k * op_k(x) over the candidate ops of one edge.

    single_path=True evaluates only op argmax(w) (GDAS-style) through `nn.switch` and scales it by
    w[argmax]: with straight-through one-hot weights the value is op(x) and the gradient reaches
    the logits. Under vmap the switch becomes a select that evaluates every branch.
    `remat_branch` recomputes the ops (all of them in the mixture, the sampled one on the single path) in the
    backward pass instead of storing their activations.
    Ops in `gated` (added by growth) are scaled by a learnable scalar that starts at zero, so a new
    branch starts without changing the edge's output. `drop_path_rate` drops the edge's output
    per sample in train mode (needs a 'dropout' rng).
    """

    C: int
    stride: int
    primitives: Sequence[str]
    depthwise_impl: str = 'conv'
    gated: Sequence[str] = ()
    drop_path_rate: float = 0.0
    remat_branch: bool = False  # recompute each op in the backward pass
    pool_bn: bool = True  # DARTS follows pools with a non-affine BN; NAS-Bench-201 does not

    def setup(self):
        self.ops = [make_op(p, self.C, self.stride, affine=False, search=self.pool_bn,
                            depthwise_impl=self.depthwise_impl, name=p) for p in self.primitives]
        self.gates = {p: self.param(f'gate_{p}', nn.initializers.zeros, ()) for p in self.gated}

    def _op(self, k: int, x, train: bool):
        p = self.primitives[k]
        y = self.ops[k](x, train).astype(x.dtype)
        return y * self.gates[p] if p in self.gates else y

    def __call__(self, x, w, train: bool, single_path: bool = False):
        # .astype: keep a bf16 compute dtype (DARTS' avg pool divides by fp32 counts)
        ops = [lambda mdl, x, k=k: mdl._op(k, x, train) for k in range(len(self.ops))]
        if self.remat_branch and not self.is_initializing():
            # a rematerialised op keeps only its input for the backward pass. Otherwise the mixture keeps
            # every op's activations, and the switch's linearization returns every branch's residuals,
            # zero-filled when not taken (CPU, 'shift', DARTS-shape weight step: mixture 1.64x, single path
            # 1.89x, at 0.07x and 0.19x the memory; bench/RESULTS.md)
            ops = [nn.remat(op) for op in ops]
        if not single_path:
            out = sum(w[k] * op(self, x) for k, op in enumerate(ops))
        else:
            if self.is_initializing():
                for op in ops:  # create every op's variables
                    op(self, x)
            idx = jnp.argmax(w)
            out = nn.switch(idx, ops, self, x) * w[idx]
        return drop_path(self, out, self.drop_path_rate, train)


def cell_inputs(C: int, reduction_prev: bool, affine: bool):
    """Preprocessing of (c_{k-2}, c_{k-1}) to C channels; FactorizedReduce when c_{k-2} is larger."""
    pre0 = (FactorizedReduce(C, affine=affine, name='pre0') if reduction_prev
            else ReLUConvBN(C, 1, 1, 0, affine=affine, name='pre0'))
    return pre0, ReLUConvBN(C, 1, 1, 0, affine=affine, name='pre1')


def edge_index(node: int, src: int) -> int:
    """DARTS edge numbering: node i's edges from states 0..i+1 follow those of nodes < i."""
    return sum(2 + t for t in range(node)) + src


def input_edges(steps: int) -> tuple[tuple[int, int, int], ...]:
    """(darts_index, src, node) of the edges that read the cell inputs (src 0 or 1)."""
    return tuple((edge_index(i, j), j, i) for i in range(steps) for j in (0, 1))


def node_edges(steps: int) -> tuple[tuple[int, int, int], ...]:
    """(darts_index, src_node, dst_node) of the edges between intermediate nodes, in an order
    where every node is complete before an edge reads it."""
    return tuple((edge_index(i, 2 + k), k, i) for i in range(steps) for k in range(i))


@jax.custom_vjp
def materialized_cotangent(x):
    """Identity whose cotangent leaves through a one-trip `while` loop, so XLA computes it in its own fusion.

    Why: an edge loop adds each edge's input gradient into the stacked cell inputs (or the node array) at a
    dynamic index. XLA fuses the whole gradient computation (all candidate ops' backward taps) into that
    in-place dynamic-update-slice, and its CPU runtime runs such a fusion on one thread. A loop is a fusion
    boundary XLA cannot simplify away here: its trip count is read from the data (1, or 0 for a NaN; the
    value passes through unchanged either way). Then the gradient is an ordinary fusion, split over the
    cores, and the update only adds it (CPU, DARTS-shape mixture weight step with remat_branch: 1.16x)."""
    return x


def _materialized_cotangent_fwd(x):
    return x, None


def _materialized_cotangent_bwd(_, g):
    first = g.reshape(-1)[0]
    trips = (first == first).astype(jnp.int32)  # 1, or 0 for NaN: not a constant XLA can fold

    def body(carry):
        i, v = carry  # scaling by (i + 1 == trips), i.e. by 1.0, keeps XLA from forwarding v around the loop
        return i + 1, v * (i + 1 == trips).astype(v.dtype)

    _, g = jax.lax.while_loop(lambda carry: carry[0] < trips, body, (jnp.int32(0), g))
    return (g,)


materialized_cotangent.defvjp(_materialized_cotangent_fwd, _materialized_cotangent_bwd)


class _InputEdge(nn.Module):
    """One edge reading a cell input; scanned over the 2*steps input edges (params stacked).

    Under remat_branch the edge's read of the cell inputs is rematerialised with its op, so the scan's
    residual is the loop-invariant stack of the two inputs, not a copy of one per edge (the rematerialised
    ops' input): DARTS-shape single-path weight step, 0.74x the temporary memory. `materialize_edge_grads`:
    see `materialized_cotangent`."""

    C: int
    stride: int
    primitives: Sequence[str]
    depthwise_impl: str
    train: bool
    single_path: bool
    gated: Sequence[str] = ()
    drop_path_rate: float = 0.0
    remat_branch: bool = False
    materialize_edge_grads: bool = False

    @nn.compact
    def __call__(self, carry, inputs, w, src):
        op = MixedOp(self.C, self.stride, self.primitives, self.depthwise_impl, self.gated, self.drop_path_rate,
                     self.remat_branch, name='mixed')

        def run(mdl, inputs, w, src):
            x = materialized_cotangent(inputs[src]) if self.materialize_edge_grads else inputs[src]
            return mdl(x, w, self.train, self.single_path)

        if self.remat_branch and not self.is_initializing():
            run = nn.remat(run)
        return carry, run(op, inputs, w, src)


class _NodeEdge(nn.Module):
    """One edge between intermediate nodes; the carry holds the node sums being accumulated.
    `materialize_edge_grads`: see `materialized_cotangent`."""

    C: int
    primitives: Sequence[str]
    depthwise_impl: str
    train: bool
    single_path: bool
    gated: Sequence[str] = ()
    drop_path_rate: float = 0.0
    remat_branch: bool = False
    materialize_edge_grads: bool = False

    @nn.compact
    def __call__(self, nodes, w, src, dst):
        op = MixedOp(self.C, 1, self.primitives, self.depthwise_impl, self.gated, self.drop_path_rate,
                     self.remat_branch, name='mixed')
        x = materialized_cotangent(nodes[src]) if self.materialize_edge_grads else nodes[src]
        return nodes.at[dst].add(op(x, w, self.train, self.single_path)), None


def _scan(module_cls, length: int, in_axes, unroll: bool):
    return nn.scan(module_cls, variable_axes={'params': 0, 'batch_stats': 0},
                   split_rngs={'params': True, 'dropout': True}, in_axes=in_axes, length=length,
                   unroll=max(length, 2) if unroll else 1)  # lax.scan keeps a loop for length 1, unroll 1


class SearchCell(nn.Module):
    """A DARTS search cell: `steps` nodes, each the sum of mixed ops over all earlier states.

    The 14 edges are evaluated by two `nn.scan`s (input edges, then node-to-node edges), so the
    compiled program holds two mixed-op bodies per cell instead of fourteen: compile time on CPU
    drops several-fold. Edge params are stacked in the order of `input_edges` / `node_edges`.
    `unroll_edges` unrolls both scans (same params): a loop writes every edge's residuals into stacked
    buffers, copies them and accumulates the inputs' gradient one edge at a time, which unrolled code
    does not (CPU, DARTS-shape mixture: 1.69x the images/s for 3.5x the compile time; the single path
    runs slower unrolled, 0.61x at the smoke shape; bench/RESULTS.md). `materialize_edge_grads` keeps the
    loops but takes the edges' input gradients out of their one-thread in-place updates
    (`materialized_cotangent`).
    """

    C: int
    reduction: bool
    reduction_prev: bool
    primitives: Sequence[str]
    steps: int = 4
    multiplier: int = 4
    depthwise_impl: str = 'conv'
    gated: Sequence[str] = ()
    drop_path_rate: float = 0.0
    remat_branch: bool = False
    unroll_edges: bool = False
    materialize_edge_grads: bool = False

    @nn.compact
    def __call__(self, s0, s1, weights, train: bool, single_path: bool = False):
        pre0, pre1 = cell_inputs(self.C, self.reduction_prev, affine=False)
        inputs = jnp.stack([pre0(s0, train), pre1(s1, train)])
        prims = tuple(self.primitives)
        in_idx, in_src, in_dst = map(jnp.array, zip(*input_edges(self.steps)))
        in_scan = _scan(_InputEdge, len(in_idx), (nn.broadcast, 0, 0), self.unroll_edges)(
            self.C, 2 if self.reduction else 1, prims, self.depthwise_impl, train, single_path,
            tuple(self.gated), self.drop_path_rate, self.remat_branch, self.materialize_edge_grads, name='input_edges')
        _, outs = in_scan(None, inputs, weights[in_idx], in_src)
        nodes = jax.ops.segment_sum(outs, in_dst, num_segments=self.steps, indices_are_sorted=True)
        if self.steps > 1:
            nd_idx, nd_src, nd_dst = map(jnp.array, zip(*node_edges(self.steps)))
            nd_scan = _scan(_NodeEdge, len(nd_idx), (0, 0, 0), self.unroll_edges)(
                self.C, prims, self.depthwise_impl, train, single_path, tuple(self.gated), self.drop_path_rate,
                self.remat_branch, self.materialize_edge_grads, name='node_edges')
            nodes, _ = nd_scan(nodes, weights[nd_idx], nd_src, nd_dst)
        return jnp.concatenate(list(nodes[self.steps - self.multiplier:]), axis=-1)


def drop_path(module: nn.Module, x, rate: float, train: bool):
    """Zeroes whole samples with probability `rate` and rescales the rest (DARTS drop-path)."""
    if not train or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng('dropout'), keep, (x.shape[0], 1, 1, 1))
    return x * mask.astype(x.dtype) / keep


class FixedCell(nn.Module):
    """A derived cell: each node sums two chosen ops (affine BN, no BN after pools, as DARTS eval)."""

    genotype: Genotype
    C: int
    reduction: bool
    reduction_prev: bool
    drop_path_rate: float = 0.0
    depthwise_impl: str = 'conv'

    @nn.compact
    def __call__(self, s0, s1, train: bool):
        g = self.genotype
        edges, concat = (g.reduce, g.reduce_concat) if self.reduction else (g.normal, g.normal_concat)
        pre0, pre1 = cell_inputs(self.C, self.reduction_prev, affine=True)
        states = [pre0(s0, train), pre1(s1, train)]
        for i in range(len(edges) // 2):
            s = 0
            for e in (2 * i, 2 * i + 1):
                op_name, j = edges[e]
                stride = 2 if self.reduction and j < 2 else 1
                h = make_op(op_name, self.C, stride, affine=True, depthwise_impl=self.depthwise_impl,
                            name=f'edge{e}_{op_name}')(states[j], train)
                if not (op_name == 'skip_connect' and stride == 1):
                    h = drop_path(self, h, self.drop_path_rate, train)
                s = s + h
            states.append(s)
        return jnp.concatenate([states[i] for i in concat], axis=-1)
