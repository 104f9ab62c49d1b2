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

from asose_jax.network import init_search_variables
from asose_jax.optim import ArchOptConfig
from asose_jax.spec import NetworkSpec
from parity import compare, convert, torch_steps
from parity.torch_nb201 import TorchNB201Network
from parity.torch_network import TorchSearchNetwork, torch_search_network

pytestmark = pytest.mark.parity

LOGITS_TOL = 1e-4      # max abs diff of logits, train and eval mode
LOSS_TOL = 1e-5        # abs diff of the loss
GRAD_REL_TOL = 1e-4    # max abs diff of a gradient group / its global L2 norm
TRAJECTORY_TOL = 1e-3  # max abs diff of weights, arch logits and batch stats after STEPS iterations
STEPS = 5
BATCH, SIZE = 8, 8
MODES = {'soft mixture': (False, False), 'hard single path': (True, True)}  # (hard, single_path)


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network on a shared CPU: more threads only contend
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def spec():
    return NetworkSpec.nb201(C=4, cells_per_stage=1)


@pytest.fixture(scope='module')
def variables(spec):
    """Flax variables from a torch init with random BN scales, biases and statistics, so that every leaf
    (eval-mode statistics included) changes the logits."""
    torch.manual_seed(0)
    sd = torch_search_network(spec).state_dict()
    for k, v in sd.items():
        if k.endswith(('running_mean', 'bias')):
            sd[k] = 0.1 * torch.randn_like(v)
        elif k.endswith('running_var') or (v.ndim == 1 and k.endswith('weight')):
            sd[k] = 0.5 + torch.rand_like(v)
    return convert.torch_to_flax(spec, sd)


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
    reference = jax.eval_shape(lambda k: init_search_variables(spec, k, SIZE), jax.random.key(0))
    ref_leaves = jax.tree_util.tree_leaves_with_path(reference)
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    assert [p for p, _ in leaves] == [p for p, _ in ref_leaves], 'converted tree differs from NB201Network.init'
    for (p, a), (_, r) in zip(leaves, ref_leaves):
        assert np.shape(a) == r.shape, f'{jax.tree_util.keystr(p)}: {np.shape(a)} vs {r.shape}'
    back = convert.torch_to_flax(spec, convert.flax_to_torch(spec, variables))
    back_leaves = jax.tree_util.tree_leaves_with_path(back)
    assert [p for p, _ in back_leaves] == [p for p, _ in leaves]
    for (p, a), (_, b) in zip(leaves, back_leaves):
        assert np.array_equal(np.asarray(a), np.asarray(b)), f'{jax.tree_util.keystr(p)} changed in the round trip'


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
    assert d['logits (train)'] <= LOGITS_TOL, f"train logits differ by {d['logits (train)']:.3e}"
    assert d['logits (eval)'] <= LOGITS_TOL, f"eval logits differ by {d['logits (eval)']:.3e}"
    assert d['loss'] <= LOSS_TOL, f"loss differs by {d['loss']:.3e}"
    assert d['weight grads / |g|'] <= GRAD_REL_TOL, f"weight grads differ by {d['weight grads / |g|']:.3e} |g|"
    assert d['arch grads / |g|'] <= GRAD_REL_TOL, f"arch grads differ by {d['arch grads / |g|']:.3e} |g|"
    assert d['arch grads (abs)'] > 0, 'arch grads agree exactly: the comparison did not run'


@pytest.mark.parametrize('mode', list(MODES))
def test_trajectory(spec, variables, grad_fns, mode):
    s = settings(mode)
    d = compare.trajectory(spec, variables, batches(4, 3), jax.random.key(4), STEPS, s, grad_fns(s.single_path))
    print(mode, {k: v for k, v in d.items() if k != 'genotype'})
    for name in (f'weights after {STEPS} steps', f'arch logits after {STEPS} steps', f'batch stats after {STEPS} steps'):
        assert d[name] <= TRAJECTORY_TOL, f'{name}: max abs diff {d[name]:.3e} (worst leaves {d["worst leaves"]})'
    assert d['loss (max over steps)'] <= 10 * LOSS_TOL, f"loss differs by {d['loss (max over steps)']:.3e}"
    assert d['genotype identical'], f"derived genotypes differ (JAX: {d['genotype']})"


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
