"""Shared by the parity tests of both search spaces (tests/test_parity.py, tests/test_parity_nb201.py):
the tolerances, the torch thread setting, the randomised variables, and the checks of a conversion
round trip, a first step and a trajectory."""
import jax
import numpy as np
import pytest
import torch

from asose_jax.space.network import init_search_variables
from parity import convert
from parity.torch_network import torch_search_network

LOGITS_TOL = 1e-4      # max abs diff of logits, train and eval mode
LOSS_TOL = 1e-5        # abs diff of the loss
GRAD_REL_TOL = 1e-4    # max abs diff of a gradient group / its global L2 norm
TRAJECTORY_TOL = 1e-3  # max abs diff of weights, arch logits and batch stats after the trajectory's steps


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
    """Tiny networks on a shared 2-core CPU: torch's default thread pool made each step ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_variables(spec, seed: int) -> dict:
    """Flax variables from a torch init, with random BN scales/biases/statistics and gate scales so that
    every leaf matters (a zero gate or unit running variance would hide errors)."""
    torch.manual_seed(seed)
    sd = torch_search_network(spec).state_dict()
    for k, v in sd.items():
        if k.endswith(('running_mean', 'bias')):
            sd[k] = 0.1 * torch.randn_like(v)
        elif k.endswith('running_var') or (v.ndim == 1 and k.endswith('weight')):
            sd[k] = 0.5 + torch.rand_like(v)
    return convert.torch_to_flax(spec, sd)


def assert_round_trip_exact(spec, variables: dict, image_size: int) -> None:
    """`variables` have the Flax init's tree and shapes, and Flax -> torch -> Flax returns them bit for bit."""
    reference = jax.eval_shape(lambda k: init_search_variables(spec, k, image_size), jax.random.key(0))
    ref_leaves = jax.tree_util.tree_leaves_with_path(reference)
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    assert [p for p, _ in leaves] == [p for p, _ in ref_leaves], 'converted tree differs from the Flax init'
    for (p, a), (_, r) in zip(leaves, ref_leaves):
        assert np.shape(a) == r.shape, f'{jax.tree_util.keystr(p)}: {np.shape(a)} vs {r.shape}'
    back = convert.torch_to_flax(spec, convert.flax_to_torch(spec, variables))
    back_leaves = jax.tree_util.tree_leaves_with_path(back)
    assert [p for p, _ in back_leaves] == [p for p, _ in leaves]
    for (p, a), (_, b) in zip(leaves, back_leaves):
        assert np.array_equal(np.asarray(a), np.asarray(b)), f'{jax.tree_util.keystr(p)} changed in the round trip'


def assert_first_step_agrees(d: dict) -> None:
    """compare.first_step's differences are within the parity tolerances."""
    assert d['logits (train)'] <= LOGITS_TOL, f"train logits differ by {d['logits (train)']:.3e}"
    assert d['logits (eval)'] <= LOGITS_TOL, f"eval logits differ by {d['logits (eval)']:.3e}"
    assert d['loss'] <= LOSS_TOL, f"loss differs by {d['loss']:.3e}"
    assert d['weight grads / |g|'] <= GRAD_REL_TOL, f"weight grads differ by {d['weight grads / |g|']:.3e} |g|"
    assert d['arch grads / |g|'] <= GRAD_REL_TOL, f"arch grads differ by {d['arch grads / |g|']:.3e} |g|"


def assert_trajectory_agrees(d: dict, steps: int) -> None:
    """compare.trajectory's differences after `steps` iterations are within the parity tolerances."""
    for name in (f'weights after {steps} steps', f'arch logits after {steps} steps', f'batch stats after {steps} steps'):
        assert d[name] <= TRAJECTORY_TOL, f'{name}: max abs diff {d[name]:.3e} (worst leaves {d["worst leaves"]})'
    assert d['loss (max over steps)'] <= 10 * LOSS_TOL, f"loss differs by {d['loss (max over steps)']:.3e}"
    assert d['genotype identical'], f"derived genotypes differ (JAX: {d['genotype']})"
