"""The jitted steps: isolation of the two optimisers, one compile per phase, second-order option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax.network import init_search_variables
from asose_jax.spec import NetworkSpec
from asose_jax.optim import ArchOptConfig, WeightOptConfig, arch_transform, weight_transform
from asose_jax.steps import SearchStepConfig, make_search_steps
from asose_jax.train_state import create_train_state


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def _batch(seed, n=4, size=8):
    rng = np.random.default_rng(seed)
    return {'image': rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
            'label': rng.integers(0, 10, n).astype(np.int32)}


@pytest.fixture(scope='module')
def setup(tiny_spec):
    wtx, atx = weight_transform(WeightOptConfig(), 100), arch_transform(ArchOptConfig(lr=0.01))
    steps = make_search_steps(tiny_spec, SearchStepConfig(tau_steps=10), wtx, atx)
    variables = init_search_variables(tiny_spec, jax.random.key(0), image_size=8)
    # train steps donate their input state: every test starts from a fresh copy
    return tiny_spec, steps, lambda: create_train_state(jax.tree_util.tree_map(jnp.array, variables), wtx, atx)


def test_weight_and_arch_steps_are_isolated_and_compile_once(setup):
    _, steps, fresh = setup
    state = fresh()
    keys = jax.random.split(jax.random.key(1), 2)
    for i in range(3):
        before = jax.device_get(state)
        state, m = steps.weight_step(state, _batch(i), keys[0])
        after = jax.device_get(state)
        assert _same(after.params['arch'], before.params['arch'])
        assert _same(after.arch_opt_state, before.arch_opt_state)
        assert not _same(after.params['weights'], before.params['weights'])
        assert int(after.step) == int(before.step) + 1 and np.isfinite(m['loss'])

        state, am = steps.arch_step(state, _batch(10 + i), keys[1])
        after_arch = jax.device_get(state)
        assert _same(after_arch.params['weights'], after.params['weights'])
        assert _same(after_arch.weight_opt_state, after.weight_opt_state)
        assert not _same(after_arch.params['arch'], after.params['arch'])
        assert int(after_arch.step) == int(after.step) and np.isfinite(am['arch_loss'])
        _, em = steps.eval_step(state, {**_batch(20 + i), 'mask': np.array([1, 1, 1, 0], bool)})
        assert float(em['count']) == 3.0
    assert steps.traces == {'weight_step': 1, 'arch_step': 1, 'eval_step': 1}


def test_steps_are_deterministic_in_stream_and_step(setup):
    _, steps, fresh = setup
    key = jax.random.key(5)
    a, ma = steps.weight_step(fresh(), _batch(0), key)
    b, mb = steps.weight_step(fresh(), _batch(0), key)
    c, mc = steps.weight_step(fresh(), _batch(0), jax.random.key(6))
    assert _same(jax.device_get(a.params), jax.device_get(b.params))
    assert float(ma['loss']) == float(mb['loss'])
    assert not _same(jax.device_get(a.params), jax.device_get(c.params))


def test_train_step_donates_the_state(setup):
    _, steps, fresh = setup
    state = fresh()
    leaf = jax.tree_util.tree_leaves(state.params['weights'])[0]
    steps.weight_step(state, _batch(0), jax.random.key(0))
    assert leaf.is_deleted()


def test_unrolled_arch_step_differs_from_first_order():
    spec = NetworkSpec.darts(C=4, layers=1, primitives=('skip_connect', 'sep_conv_3x3'))
    wtx, atx = weight_transform(WeightOptConfig(), 100), arch_transform(ArchOptConfig(lr=0.01))
    variables = init_search_variables(spec, jax.random.key(0), image_size=8)
    fresh = lambda: create_train_state(jax.tree_util.tree_map(jnp.array, variables), wtx, atx)
    soft = dict(hard=False, single_path=False, tau_steps=10)
    second = make_search_steps(spec, SearchStepConfig(**soft, unrolled=True, unrolled_lr=0.5), wtx, atx)
    batch = {**_batch(0), 'train_image': _batch(1)['image'], 'train_label': _batch(1)['label']}
    _, m2 = second.arch_step(fresh(), batch, jax.random.key(0))
    first = make_search_steps(spec, SearchStepConfig(**soft), wtx, atx)
    _, m1 = first.arch_step(fresh(), _batch(0), jax.random.key(0))
    g1, g2 = float(m1['arch_grad_norm']), float(m2['arch_grad_norm'])
    assert np.isfinite(g2) and g2 > 0 and g1 > 0
    assert g1 != pytest.approx(g2, rel=1e-6)


def test_pointwise_dot_reaches_the_search_steps(setup):
    """model.pointwise_impl='dot' swaps the network's 1x1 convs for matmuls inside the jitted steps
    (ops.pointwise): the traced program has fewer convolutions (same numerics: test_ops)."""
    spec, conv_steps, fresh = setup
    wtx = weight_transform(WeightOptConfig(), 100)
    dot_steps = make_search_steps(spec, SearchStepConfig(tau_steps=10, pointwise_impl='dot'), wtx, None)
    state, batch = fresh(), _batch(0)
    convs = [str(jax.make_jaxpr(s.eval_jit)(state, batch)).count('conv_general_dilated')
             for s in (conv_steps, dot_steps)]
    assert convs[1] < convs[0], convs
    with pytest.raises(ValueError, match='pointwise_impl'):
        make_search_steps(spec, SearchStepConfig(pointwise_impl='matmul'), wtx, None)
