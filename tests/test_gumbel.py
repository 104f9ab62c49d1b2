import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax.search.gumbel import sample, sample_tree, temperature


def test_hard_samples_are_one_hot():
    logits = jax.random.normal(jax.random.key(0), (14, 8))
    for i in range(5):
        w = sample(jax.random.key(i), logits, 1.0, hard=True)
        np.testing.assert_array_equal(np.sort(np.asarray(w), -1)[:, :-1], 0.0)
        np.testing.assert_allclose(np.asarray(w).max(-1), 1.0, atol=1e-6)


def test_soft_samples_sum_to_one_and_sharpen_with_tau():
    logits = jax.random.normal(jax.random.key(0), (14, 8))
    hot = sample(jax.random.key(1), logits, 10.0, hard=False)
    cold = sample(jax.random.key(1), logits, 0.1, hard=False)
    np.testing.assert_allclose(np.asarray(hot.sum(-1)), 1.0, rtol=1e-5)
    assert float(cold.max(-1).mean()) > float(hot.max(-1).mean())
    # same key and logits: the argmax of soft and hard samples agree
    hard = sample(jax.random.key(1), logits, 0.1, hard=True)
    np.testing.assert_array_equal(np.argmax(cold, -1), np.argmax(hard, -1))


def test_straight_through_gradient_equals_soft_gradient():
    logits = jax.random.normal(jax.random.key(0), (14, 8))
    c = jax.random.normal(jax.random.key(5), (14, 8))
    key = jax.random.key(7)
    g_hard = jax.grad(lambda a: jnp.sum(c * sample(key, a, 0.7, hard=True)))(logits)
    g_soft = jax.grad(lambda a: jnp.sum(c * sample(key, a, 0.7, hard=False)))(logits)
    np.testing.assert_allclose(np.asarray(g_hard), np.asarray(g_soft), rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(g_hard).sum()) > 0


def test_sampling_is_a_pure_function_of_key():
    logits = {'normal': jnp.zeros((14, 8)), 'reduce': jnp.zeros((14, 8))}
    a = sample_tree(jax.random.key(3), logits, 1.0, hard=True)
    b = sample_tree(jax.random.key(3), logits, 1.0, hard=True)
    c = sample_tree(jax.random.key(4), logits, 1.0, hard=True)
    for t in logits:
        np.testing.assert_array_equal(a[t], b[t])
    assert any(not np.array_equal(a[t], c[t]) for t in logits)
    assert not np.array_equal(a['normal'], a['reduce'])  # each cell type has its own key


@pytest.mark.parametrize('schedule', ['exponential', 'linear'])
def test_temperature_schedule(schedule):
    assert float(temperature(0, 100, 10.0, 0.1, schedule)) == pytest.approx(10.0)
    assert float(temperature(100, 100, 10.0, 0.1, schedule)) == pytest.approx(0.1, rel=1e-5)
    assert float(temperature(500, 100, 10.0, 0.1, schedule)) == pytest.approx(0.1, rel=1e-5)
    mid = float(temperature(50, 100, 10.0, 0.1, schedule))
    assert mid == pytest.approx(1.0 if schedule == 'exponential' else 5.05, rel=1e-5)
    taus = [float(temperature(s, 100, 10.0, 0.1, schedule)) for s in range(0, 101, 10)]
    assert taus == sorted(taus, reverse=True)


def test_unknown_schedule():
    with pytest.raises(ValueError, match='allowed'):
        temperature(0, 10, 1.0, 0.1, 'cosine')
