"""JAX vs PyTorch parity on the NAS-Bench-201 search network (C=4, one cell per stage, 8x8 images, batch 8):
the Flax <-> torch conversion, first-step logits, loss and gradients (soft mixture and hard single path), and
short weight+arch trajectories. Tolerances as tests/test_parity.py (the DARTS space).

One spec and one input shape throughout: two compiled JAX programs (mixture, single path; hard/soft is traced)
and one set of jitted optax updates, shared by the first-step and trajectory tests.
"""
import jax
import numpy as np
import pytest
import torch

from asose_jax.search.optim import ArchOptConfig
from asose_jax.space.spec import NetworkSpec
from parity import compare, convert, torch_steps
from parity.torch_nb201 import TorchNB201Network
from parity.torch_network import TorchSearchNetwork, torch_search_network
from parity_checks import (assert_first_step_agrees, assert_round_trip_exact, assert_trajectory_agrees,  # noqa: F401
                           one_torch_thread, random_variables)

pytestmark = pytest.mark.parity

STEPS = 5
BATCH, SIZE = 8, 8
MODES = {'soft mixture': (False, False), 'hard single path': (True, True)}  # (hard, single_path)


@pytest.fixture(scope='module')
def spec():
    return NetworkSpec.nb201(C=4, cells_per_stage=1)


@pytest.fixture(scope='module')
def variables(spec):
    return random_variables(spec, 0)


@pytest.fixture(scope='module')
def grad_fns(spec):
    """The compiled JAX step of each path form (compiled on first use)."""
    cache = {}

    def get(single_path: bool):
        if single_path not in cache:
            cache[single_path] = compare.make_jax_grad_fn(spec, single_path=single_path)
        return cache[single_path]
    return get


def batches(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, SIZE, SIZE, 3)).astype(np.float32), rng.integers(0, 10, BATCH))
            for _ in range(n)]


def settings(mode: str) -> compare.Settings:
    hard, single_path = MODES[mode]
    return compare.Settings(hard=hard, single_path=single_path, arch=ArchOptConfig(lr=3e-3))


def test_factory_picks_the_twin_of_the_space(spec):
    assert isinstance(torch_search_network(spec), TorchNB201Network)
    assert isinstance(torch_search_network(NetworkSpec.darts(C=4, layers=3)), TorchSearchNetwork)
    with pytest.raises(ValueError, match='torch_search_network'):
        TorchSearchNetwork(spec)


def test_round_trip_is_exact_and_matches_flax_layout(spec, variables):
    assert_round_trip_exact(spec, variables, SIZE)


def test_stage_axis_mismatch_names_the_leaf(spec, variables):
    bad = jax.tree_util.tree_map(np.asarray, variables)
    kernel = bad['params']['weights']['cells2_2']['edge3_1']['nor_conv_3x3']['conv']['kernel']
    bad['params']['weights']['cells2_2']['edge3_1']['nor_conv_3x3']['conv']['kernel'] = np.concatenate([kernel] * 2)
    with pytest.raises(ValueError, match=r'cells2_2/edge3_1/nor_conv_3x3/conv/kernel: leading stacked axis'):
        convert.flax_to_torch(spec, bad)


@pytest.mark.parametrize('mode', list(MODES))
def test_first_step_logits_loss_grads(spec, variables, grad_fns, mode):
    s = settings(mode)
    x, y = batches(1, 1)[0]
    d = compare.first_step(spec, variables, x, y, jax.random.key(2), 2.0, s, grad_fns(s.single_path))
    print(mode, d)
    assert_first_step_agrees(d)
    assert d['arch grads (abs)'] > 0, 'arch grads agree exactly: the comparison did not run'


@pytest.mark.parametrize('mode', list(MODES))
def test_trajectory(spec, variables, grad_fns, mode):
    s = settings(mode)
    d = compare.trajectory(spec, variables, batches(4, 3), jax.random.key(4), STEPS, s, grad_fns(s.single_path))
    print(mode, {k: v for k, v in d.items() if k != 'genotype'})
    assert_trajectory_agrees(d, STEPS)


@pytest.mark.parametrize('mode', list(MODES))
def test_steps_move_every_part(spec, variables, mode):
    """Guards the trajectory test: one weight and one arch step change what it compares (stem, a stage's edge,
    a ResNet block, the classifier, the arch logits, and the BN statistics inside the stages; on the single
    path only the sampled ops' statistics move)."""
    s = settings(mode)
    model = compare.torch_model(spec, variables)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd, sched, adam = torch_steps.make_optimizers(model, s.weight, s.arch, 2)
    x, y = compare.nchw(batches(1, 5)[0][0]), compare.labels(batches(1, 5)[0][1])
    noise = {'cell': torch.randn(spec.num_edges, spec.num_ops)}
    torch_steps.weight_step(model, sgd, sched, x, y, noise, 1.0, s.hard, s.single_path, 5.0)
    torch_steps.arch_step(model, adam, x, y, noise, 1.0, s.hard, s.single_path)
    after = model.state_dict()
    for k in ('stem_conv.weight', 'cells0_0.0.edge3_2.nor_conv_3x3.conv.weight', 'cell3.conv_b.conv.weight',
              'cell1.downsample.weight', 'classifier.weight', 'arch.cell'):
        assert not torch.equal(before[k], after[k]), f'{k} did not move'
    for stage in ('cells0_0', 'cells2_2', 'cells4_4'):
        stats = [k for k in after if k.startswith(stage) and k.endswith('running_var')]
        assert any(not torch.equal(before[k], after[k]) for k in stats), f'no BN statistic of {stage} moved'
