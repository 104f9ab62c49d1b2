"""JAX vs PyTorch parity on tiny shapes (C=4, 3 cells of 2 nodes, 8x8 images, batch 8): logits, loss,
gradients, 20-step trajectories with hard and soft Gumbel, derived genotype, the Flax <-> torch conversion,
and a network grown by every growth operation.

One compiled JAX program per spec: hard/soft is a traced flag of parity.compare.make_jax_grad_fn; the
optax updates are jitted once (parity.compare.make_jax_update_fns). Torch runs on one thread: on the
shared 2-core CPU its default thread pool made each step ~10x slower.
"""
import dataclasses

import jax
import numpy as np
import pytest
import torch

from asose_jax.growth import operations as growth
from asose_jax.search.optim import ArchOptConfig, WeightOptConfig, arch_transform, weight_transform
from asose_jax.space.genotype import PRIMITIVES
from asose_jax.space.ops import Pool
from asose_jax.space.spec import NetworkSpec
from parity import compare, convert, torch_steps
from parity.torch_network import TorchSearchNetwork
from parity_checks import (LOGITS_TOL, assert_first_step_agrees, assert_round_trip_exact,  # noqa: F401
                           assert_trajectory_agrees, one_torch_thread, random_variables)

pytestmark = pytest.mark.parity

STEPS = 20
BATCH, SIZE = 8, 8
GROWTH_CHAIN = (('depth', {}), ('attention', {}), ('width', {'factor': 1.5}), ('branch', {'op': 'dil_conv_3x3'}),
                ('regularise', {'drop_path': 0.2, 'dropout': 0.3}))


def batches(n: int, seed: int, num_classes: int = 10) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, SIZE, SIZE, 3)).astype(np.float32),
             rng.integers(0, num_classes, BATCH)) for _ in range(n)]


@pytest.fixture(scope='module')
def full_spec():
    """The DARTS cell (4 nodes, 14 edges): conversion tests only, nothing is compiled for it."""
    return NetworkSpec.darts(C=4, layers=3)


@pytest.fixture(scope='module')
def spec():
    """Normal and reduction cells of 2 nodes (5 edges), every primitive but max_pool_3x3: the trajectory
    tests' network. With max pool, hard-Gumbel trajectories stay within 1e-7 for 4 iterations, then jump
    to 3e-4 in one weight step (5e-2 after 20): a window's maximum changes input where two candidates lie
    within the sides' ~1e-7 drift. Exact ties route alike (first maximum) in XLA, the shift form and
    torch; test_first_step_with_max_pool compares the first step with it."""
    return NetworkSpec.darts(C=4, layers=3, steps=2, multiplier=2,
                             primitives=tuple(p for p in PRIMITIVES if p != 'max_pool_3x3'))


@pytest.fixture(scope='module')
def variables(spec):
    return random_variables(spec, 0)


@pytest.fixture(scope='module')
def grad_fn(spec):
    return compare.make_jax_grad_fn(spec, single_path=False)


def settings(hard: bool) -> compare.Settings:
    return compare.Settings(hard=hard, single_path=False, arch=ArchOptConfig(lr=3e-3))


def test_round_trip_is_exact_and_matches_flax_layout(full_spec):
    assert_round_trip_exact(full_spec, random_variables(full_spec, 0), SIZE)


def test_shape_mismatch_names_the_key(full_spec):
    spec, variables = full_spec, random_variables(full_spec, 0)
    bad = jax.tree_util.tree_map(lambda a: a, variables)
    bad['params']['weights']['cell1']['pre1']['conv']['kernel'] = np.zeros((1, 1, 16, 5), np.float32)
    with pytest.raises(ValueError, match=r'cell1\.pre1\.conv\.weight'):
        convert.flax_to_torch(spec, bad)
    sd = convert.flax_to_torch(spec, variables)
    sd['cell2.edges.7.sep_conv_3x3.op2.bn.running_var'] = torch.ones(5)
    with pytest.raises(ValueError, match=r'cell2\.edges\.7\.sep_conv_3x3\.op2\.bn\.running_var'):
        convert.torch_to_flax(spec, sd)
    del sd['classifier.bias']
    with pytest.raises(ValueError, match='classifier.bias'):
        convert.torch_to_flax(spec, sd)


def _assert_first_step_agrees(d):
    assert_first_step_agrees(d)
    assert d['arch grads (abs)'] > 0 or d['arch grads / |g|'] == 0  # sanity: the comparison ran


@pytest.mark.parametrize('hard', [False, True], ids=['soft', 'hard'])
def test_first_step_logits_loss_grads(spec, variables, grad_fn, hard):
    x, y = batches(1, 1)[0]
    _assert_first_step_agrees(compare.first_step(spec, variables, x, y, jax.random.key(2), 2.0, settings(hard),
                                                 grad_fn))


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('impl', ['conv', 'shift'])
def test_max_pool_ties_route_like_torch(impl, stride):
    """A window with several equal maxima sends its gradient to one of them; XLA's select-and-scatter, the
    shift form and torch's CPU kernel all pick the first in row-major order. Integers 0-2 tie everywhere."""
    x = np.random.default_rng(stride).integers(0, 3, (2, 7, 7, 4)).astype(np.float32)
    out, vjp = jax.vjp(lambda a: Pool('max', stride, impl=impl).apply({}, a, False), x)
    g = np.random.default_rng(5).standard_normal(out.shape).astype(np.float32)
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
    yt = torch.nn.functional.max_pool2d(xt, 3, stride, 1)
    yt.backward(torch.tensor(g).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(out), yt.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(np.asarray(vjp(g)[0]), xt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@pytest.fixture(scope='module')
def max_pool_case():
    """Every primitive, max_pool_3x3 included, in the `shift` form (depthwise convs and both pools, with
    their custom VJPs): the CPU recipe's program against the torch twin. (The tied windows a C=4 network
    makes sit behind a ReLU that zeroes their gradient either way, so this does not check the tie rule;
    test_max_pool_ties_route_like_torch does.)"""
    spec = NetworkSpec.darts(C=4, layers=3, steps=2, multiplier=2, primitives=tuple(PRIMITIVES))
    return spec, random_variables(spec, 0), compare.make_jax_grad_fn(spec, single_path=False, depthwise_impl='shift')


@pytest.mark.parametrize('hard', [False, True], ids=['soft', 'hard'])
def test_first_step_with_max_pool(max_pool_case, hard):
    spec, variables, grad_fn = max_pool_case
    assert 'max_pool_3x3' in spec.primitives
    x, y = batches(1, 1)[0]
    _assert_first_step_agrees(compare.first_step(spec, variables, x, y, jax.random.key(2), 2.0, settings(hard),
                                                 grad_fn))


@pytest.mark.parametrize('hard', [False, True], ids=['soft', 'hard'])
def test_trajectory(spec, variables, grad_fn, hard):
    d = compare.trajectory(spec, variables, batches(4, 3), jax.random.key(4), STEPS, settings(hard), grad_fn)
    print({k: v for k, v in d.items() if k != 'genotype'})
    assert_trajectory_agrees(d, STEPS)


def test_trajectory_moves_the_params(spec, variables, grad_fn):
    """Guards the trajectory test: the compared quantities must actually change."""
    model = compare.torch_model(spec, variables)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd, sched, adam = torch_steps.make_optimizers(model, settings(True).weight, settings(True).arch, 2)
    x, y = batches(1, 5)[0]
    noise = {t: torch.randn(spec.num_edges, spec.num_ops) for t in ('normal', 'reduce')}
    torch_steps.weight_step(model, sgd, sched, compare.nchw(x), compare.labels(y), noise, 1.0, True, False, 5.0)
    torch_steps.arch_step(model, adam, compare.nchw(x), compare.labels(y), noise, 1.0, True, False)
    after = model.state_dict()
    for k in ('stem_conv.weight', 'arch.normal', 'arch.reduce', 'cell0.pre1.bn.running_var'):
        assert not torch.equal(before[k], after[k]), f'{k} did not move'


def _perturb_grown(variables: dict, rng) -> dict:
    """Growth starts its new parts at zero (gates, SE fc2, residual BN scale); make them non-zero, as
    training would, so that the comparison sees them (host numpy, no per-leaf dispatch)."""
    def noisy(path, x):
        name = jax.tree_util.keystr(path)
        x = np.asarray(x)
        grown = any(s in name for s in ('_gate', '_se', "'gate_"))
        return (x + 0.5 * rng.standard_normal(x.shape)).astype(x.dtype) if grown else x
    return {**variables, 'params': jax.tree_util.tree_map_with_path(noisy, variables['params'])}


def test_grown_network_same_logits():
    """A spec grown through every growth operation (residual cell, SE gate, widened stage, gated branch op,
    drop-path/dropout), grown parts made non-zero, converted to torch: train and eval logits agree.
    Single-path with one-hot edges that select every op somewhere. Drop-path and dropout are random in
    train mode, so train mode is compared with their rates at 0; eval mode (where they are the identity)
    with the rates of the grown spec on the torch side."""
    spec = NetworkSpec.darts(C=4, layers=3, steps=2, multiplier=2,
                             primitives=('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3'))
    variables = random_variables(spec, 1)
    txs = (weight_transform(WeightOptConfig(), 100), arch_transform(ArchOptConfig()))
    opt = tuple(jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(tx.init, variables['params']))
                for tx in txs)
    rng = np.random.default_rng(2)
    for n, (kind, options) in enumerate(GROWTH_CHAIN):
        grown = growth.grow(kind, spec, variables, opt, jax.random.key(10 + n), txs=txs, **options)
        spec, variables, opt = grown.spec, _perturb_grown(grown.variables, rng), grown.opt_states
    assert [c.residual for c in spec.cells].count(True) == 1 and any(c.attention for c in spec.cells)
    assert spec.branch_ops == ('dil_conv_3x3',) and len({c.C for c in spec.cells}) > 1 and spec.drop_path > 0
    gates = [np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(variables['params'])[0]
             if 'gate' in jax.tree_util.keystr(p) or '_se' in jax.tree_util.keystr(p)]
    assert gates and all(np.all(np.abs(g) > 0) for g in gates), 'grown parts must be non-zero to be tested'

    ew = {t: np.eye(spec.num_ops, dtype=np.float32)[(np.arange(spec.num_edges) + 2 * j) % spec.num_ops]
          for j, t in enumerate(('normal', 'reduce'))}  # every op (the branch op too) chosen on some edge
    x, _ = batches(1, 7)[0]
    no_reg = dataclasses.replace(spec, drop_path=0.0, dropout=0.0)
    train, evaluated = compare.make_jax_forward_fn(no_reg, single_path=True)(
        variables['params']['weights'], variables['batch_stats'], x, ew)
    ew_t = {t: compare.to_torch(v) for t, v in ew.items()}
    logits = {}
    for name, s in (('regularised', spec), ('plain', no_reg)):
        model = compare.torch_model(s, variables)
        with torch.no_grad():
            model.eval()  # first: a train-mode pass would update the running statistics
            logits[name, 'eval'] = model(compare.nchw(x), ew_t, single_path=True)
            model.train()
            torch.manual_seed(0)
            logits[name, 'train'] = model(compare.nchw(x), ew_t, single_path=True)
    d_train = compare.max_diff(train, logits['plain', 'train'])
    d_eval = compare.max_diff(evaluated, logits['regularised', 'eval'])
    assert d_train <= LOGITS_TOL, f'train logits differ by {d_train:.3e}'
    assert d_eval <= LOGITS_TOL, f'eval logits differ by {d_eval:.3e}'
    assert torch.equal(logits['plain', 'eval'], logits['regularised', 'eval']), 'drop-path/dropout act in eval mode'
    d_reg = compare.max_diff(logits['plain', 'train'], logits['regularised', 'train'])
    assert d_reg > 1e-3, f'drop-path/dropout do nothing in train mode (logits move by {d_reg:.3e})'


def test_torch_sample_matches_gumbel_sample(spec, variables):
    from asose_jax.search import gumbel
    arch, key = variables['params']['arch'], jax.random.key(8)
    noise = {t: compare.to_torch(v) for t, v in compare.gumbel_noise(key, arch).items()}
    for hard in (False, True):
        j = gumbel.sample_tree(key, arch, 0.7, hard)
        t = torch_steps.sample_edge_weights({k: compare.to_torch(v) for k, v in arch.items()}, noise, 0.7, hard)
        for name in j:
            d = compare.max_diff(j[name], t[name])
            assert d <= 1e-6, f'{name} hard={hard}: edge weights differ by {d:.3e}'


def test_unbiased_mode_is_stock_batchnorm(spec):
    torch.manual_seed(0)
    model = TorchSearchNetwork(spec, running_var='unbiased')
    stock = torch.nn.BatchNorm2d(spec.stem_C)
    x = torch.randn(4, spec.stem_C, 5, 5)
    model.stem_bn.train(), stock.train()
    torch.testing.assert_close(model.stem_bn(x), stock(x))
    torch.testing.assert_close(model.stem_bn.running_var, stock.running_var)
    with pytest.raises(ValueError, match='running_var'):
        TorchSearchNetwork(spec, running_var='nope')
