"""The two optimisers are isolated: a weight update never moves the arch group or its state."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asose_jax.search.optim import ArchOptConfig, WeightOptConfig, arch_transform, labels, weight_transform


def _params():
    k = jax.random.split(jax.random.key(0), 3)
    return {'weights': {'conv': {'kernel': jax.random.normal(k[0], (3, 3, 2, 4))}, 'dense': {'bias': jnp.ones(4)}},
            'arch': {'normal': jax.random.normal(k[1], (14, 8)), 'reduce': jax.random.normal(k[2], (14, 8))}}


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_every_leaf_is_labelled():
    p = _params()
    lab = labels(p)
    assert jax.tree_util.tree_structure(lab) == jax.tree_util.tree_structure(p)
    assert set(jax.tree_util.tree_leaves(lab['weights'])) == {'weights'}
    assert set(jax.tree_util.tree_leaves(lab['arch'])) == {'arch'}
    with pytest.raises(ValueError, match='no optimizer label'):
        labels({**p, 'extra': jnp.ones(1)})


def test_transforms_are_isolated():
    p = _params()
    wtx, atx = weight_transform(WeightOptConfig(), 100), arch_transform(ArchOptConfig())
    ws, as_ = wtx.init(p), atx.init(p)
    grads = jax.tree_util.tree_map(jnp.ones_like, p)
    # a weight update: arch params and the arch optimizer state unchanged (bitwise)
    u, ws2 = wtx.update(grads, ws, p)
    p2 = optax.apply_updates(p, u)
    assert _equal(p2['arch'], p['arch'])
    assert not _equal(p2['weights'], p['weights'])
    # an arch update: weights and the weight optimizer state unchanged
    u, as2 = atx.update(grads, as_, p2)
    p3 = optax.apply_updates(p2, u)
    assert _equal(p3['weights'], p2['weights'])
    assert not _equal(p3['arch'], p2['arch'])
    # each update only touched its own state
    _, ws3 = wtx.update(grads, ws2, p3)
    assert not _equal(ws3, ws2)
    assert _equal(atx.init(p), as_) and not _equal(as2, as_)


def test_single_multi_transform_would_leak():
    """Why there are two transforms: one multi_transform moves the arch logits on a weight step."""
    p = _params()
    tx = optax.multi_transform({'weights': optax.sgd(0.1), 'arch': optax.adam(0.1)}, labels)
    s = tx.init(p)
    g = jax.tree_util.tree_map(jnp.ones_like, p)
    u, s = tx.update(g, s, p)  # an arch step builds Adam momentum
    p = optax.apply_updates(p, u)
    g_weights_only = {'weights': g['weights'], 'arch': jax.tree_util.tree_map(jnp.zeros_like, p['arch'])}
    u, _ = tx.update(g_weights_only, s, p)
    assert float(jnp.abs(u['arch']['normal']).max()) > 0


def test_sgd_matches_torch_semantics():
    """clip -> L2 -> momentum buffer (b = m b + g) -> p -= lr b, with the cosine lr at step 0."""
    cfg = WeightOptConfig(lr=0.1, lr_min=0.1, momentum=0.9, weight_decay=0.01, grad_clip=1e9)
    p = {'weights': {'w': jnp.array([1.0, -2.0])}, 'arch': {}}
    tx = weight_transform(cfg, 10)
    s = tx.init(p)
    g = {'weights': {'w': jnp.array([0.5, 0.5])}, 'arch': {}}
    u1, s = tx.update(g, s, p)
    b1 = np.array([0.5, 0.5]) + 0.01 * np.array([1.0, -2.0])
    np.testing.assert_allclose(u1['weights']['w'], -0.1 * b1, rtol=1e-6)
    p = optax.apply_updates(p, u1)
    u2, _ = tx.update(g, s, p)
    b2 = 0.9 * b1 + np.array([0.5, 0.5]) + 0.01 * np.asarray(p['weights']['w'])
    np.testing.assert_allclose(u2['weights']['w'], -0.1 * b2, rtol=1e-6)
