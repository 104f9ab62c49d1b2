"""The jitted steps: isolation of the two optimisers, one compile per phase, second-order option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax.search.optim import ArchOptConfig, WeightOptConfig, arch_transform, hparam_transforms, weight_transform
from asose_jax.search.steps import SearchStepConfig, make_search_steps
from asose_jax.search.train_state import create_train_state, with_hparams
from asose_jax.space.network import init_search_variables
from asose_jax.space.spec import NetworkSpec


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


def test_runtime_hyperparameters_are_traced(setup):
    """The state's hparams scale the weight lr, arch lr, arch weight decay and tau inside the compiled
    steps: new values change the result and compile nothing (a monitor action or a NaN rollback)."""
    spec, _, fresh = setup
    wtx, atx = hparam_transforms(WeightOptConfig(), ArchOptConfig(lr=0.01), 100)
    steps = make_search_steps(spec, SearchStepConfig(tau_steps=10), wtx, atx)
    key, start = jax.random.key(3), jax.device_get(fresh())

    def weight_delta(**hp):
        new, m = steps.weight_step(with_hparams(fresh(), **hp), _batch(0), key)
        return jax.tree_util.tree_map(lambda a, b: np.asarray(a) - b, jax.device_get(new.params['weights']),
                                      start.params['weights']), float(m['tau'])

    def arch_delta(**hp):
        new, _ = steps.arch_step(with_hparams(fresh(), **hp), _batch(1), key)
        return {t: np.asarray(a) - start.params['arch'][t] for t, a in jax.device_get(new.params['arch']).items()}

    full, tau = weight_delta()
    half, tau_half = weight_delta(lr_scale=0.5, tau_scale=0.5)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(half)):
        np.testing.assert_allclose(b, 0.5 * a, rtol=1e-4, atol=1e-7)  # SGD's first step is linear in lr
    assert tau_half == pytest.approx(0.5 * tau) and np.abs(jax.tree_util.tree_leaves(full)[0]).max() > 0
    arch, arch_slow = arch_delta(), arch_delta(arch_lr_scale=0.25)
    for t in arch:
        np.testing.assert_allclose(arch_slow[t], 0.25 * arch[t], rtol=1e-4, atol=1e-8)
    assert any(not np.allclose(arch[t], arch_delta(arch_wd_scale=1e4)[t]) for t in arch)
    assert steps.traces == {'weight_step': 1, 'arch_step': 1}
