"""Parameter and multiply-accumulate (MAC) counts of search and fixed networks, traced not hand-written.

MACs are read off the jaxpr of the eval-mode forward pass for one image: every `conv_general_dilated`
and `dot_general` contributes (output elements) x (reduction length), the quantity DARTS-style
counters (thop, ptflops conv + linear) report. Sub-programs are followed: `scan` bodies count
`length` times, `cond`/`switch` count their most expensive branch. Depthwise convs are counted with
`depthwise_impl='conv'` (the 'shift' form has the same parameters but no conv to count).
Parameters come from `jax.eval_shape` of `init`, so nothing is computed or allocated.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from asose_jax.space.genotype import Genotype
from asose_jax.space.network import FixedNetwork, SearchNetwork, count_params, uniform_edge_weights
from asose_jax.space.spec import NetworkSpec

AUX_HEAD = 'aux_head'


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params['dimension_numbers']
        out = eqn.outvars[0].aval.shape
        per_output = rhs[dn.rhs_spec[1]] * math.prod(rhs[d] for d in dn.rhs_spec[2:])
        return math.prod(out) * per_output
    if name == 'dot_general':
        (contract_lhs, _), _ = eqn.params['dimension_numbers']
        lhs = eqn.invars[0].aval.shape
        return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract_lhs)
    return 0


def _sub_jaxprs(value):
    if isinstance(value, jcore.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jcore.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_macs(jaxpr) -> int:
    """Conv + dense MACs of a (closed) jaxpr, following nested programs."""
    jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        name = eqn.primitive.name
        if name == 'while':
            raise NotImplementedError('jaxpr_macs: a while loop has no static trip count to multiply by')
        subs = {k: _sub_jaxprs(v) for k, v in eqn.params.items()}
        if name == 'cond':
            total += max((jaxpr_macs(j) for j in subs.get('branches', [])), default=0)
            continue
        inner = sum(jaxpr_macs(j) for js in subs.values() for j in js)
        total += inner * (eqn.params['length'] if name == 'scan' else 1)
    return total


def _split_aux(params: dict) -> tuple[int, int]:
    """(parameters without the auxiliary head, parameters of the auxiliary head)."""
    aux = count_params(params.get(AUX_HEAD, {}))
    return count_params(params) - aux, aux


def fixed_network_complexity(genotype: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10,
                             image_size: int = 32, stem_multiplier: int = 3, auxiliary: bool = True) -> dict:
    """{'params', 'params_aux', 'params_with_aux', 'macs'} of FixedNetwork(genotype) on one image.

    'params' excludes the auxiliary head (as DARTS' count_parameters_in_MB does); MACs are of the
    eval-mode forward, which does not run the auxiliary head.
    """
    return model_complexity(FixedNetwork(genotype, C=C, layers=layers, num_classes=num_classes,
                                         stem_multiplier=stem_multiplier, auxiliary=auxiliary, depthwise_impl='conv'),
                            image_size)


def model_complexity(model, image_size: int = 32) -> dict:
    """`fixed_network_complexity` of any fixed network called as `(x, train) -> (logits, aux)`: the
    DARTS FixedNetwork or the NAS-Bench-201 one."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    key = jax.random.key(0)
    variables = jax.eval_shape(lambda k, x: model.init({'params': k, 'dropout': k}, x, train=True), key, x)
    params, aux = _split_aux(variables['params'])
    macs = jaxpr_macs(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x))
    return {'params': params, 'params_aux': aux, 'params_with_aux': params + aux, 'macs': macs}


def search_network_complexity(spec: NetworkSpec, image_size: int = 32) -> dict:
    """{'params', 'arch_params', 'macs'} of the search network: weights, arch logits, and the MACs
    of the full mixture (every op of every edge, eval mode) on one image."""
    model = SearchNetwork(spec, depthwise_impl='conv')
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    ew = uniform_edge_weights(spec)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, ew, train=False), jax.random.key(0), x)
    macs = jaxpr_macs(jax.make_jaxpr(lambda v, x: model.apply(v, x, ew, train=False))(variables, x))
    return {'params': count_params(variables['params']), 'arch_params': 2 * spec.num_edges * spec.num_ops,
            'macs': macs}
