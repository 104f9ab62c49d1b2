"""The search algorithm's options: the edge-weight samplings and beta-decay regularisation (no network)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax.run import config as config_lib
from asose_jax.search.steps import SearchStepConfig, beta_penalty, edge_weights, eval_edge_weights

ARCH = {'normal': jnp.array([[0.3, -0.2, 1.0], [0.0, 0.5, -1.0]]), 'reduce': jnp.array([[2.0, 0.0, 0.0]])}


def test_softmax_sampling_is_the_noise_free_mixture():
    cfg = SearchStepConfig(sampling='softmax', hard=False, single_path=False)
    a, _ = edge_weights(cfg, ARCH, jax.random.key(0), 0)
    b, _ = edge_weights(cfg, ARCH, jax.random.key(1), 5)
    for t in ARCH:
        np.testing.assert_allclose(a[t], jax.nn.softmax(ARCH[t], -1), rtol=1e-6)
        np.testing.assert_array_equal(a[t], b[t])  # no noise: the key does not matter


def test_dirichlet_samples_are_mixtures_with_the_concentrations_mean():
    cfg = SearchStepConfig(sampling='dirichlet', hard=False, single_path=False, eval_mode='softmax')
    a, _ = edge_weights(cfg, ARCH, jax.random.key(0), 0)
    b, _ = edge_weights(cfg, ARCH, jax.random.key(1), 0)
    for t in ARCH:
        np.testing.assert_allclose(a[t].sum(-1), 1.0, rtol=1e-5)
        assert bool(jnp.all(a[t] >= 0))
        assert float(jnp.max(jnp.abs(a[t] - b[t]))) > 1e-3  # a sample, not a fixed mixture
    keys = jax.random.split(jax.random.key(2), 4000)
    samples = jax.vmap(lambda k: edge_weights(cfg, ARCH, k, 0)[0]['normal'])(keys)
    np.testing.assert_allclose(samples.mean(0), eval_edge_weights(cfg, ARCH)['normal'], atol=0.02)
    # the arch gradient flows through the sample (reparameterised)
    g = jax.grad(lambda arch: edge_weights(cfg, arch, jax.random.key(0), 0)[0]['normal'][0, 2])(ARCH)
    assert float(jnp.abs(g['normal']).sum()) > 0


def test_beta_penalty_ramps_over_the_search_and_shrinks_logsumexp():
    cfg = SearchStepConfig(sampling='softmax', hard=False, single_path=False, beta_reg=2.0, tau_start=10,
                           tau_steps=100)
    lse = np.mean([float(jax.nn.logsumexp(a, -1).mean()) for a in ARCH.values()])
    assert float(beta_penalty(cfg, ARCH, jnp.int32(10))) == 0.0
    assert float(beta_penalty(cfg, ARCH, jnp.int32(60))) == pytest.approx(0.5 * 2.0 * lse, rel=1e-5)
    assert float(beta_penalty(cfg, ARCH, jnp.int32(500))) == pytest.approx(2.0 * lse, rel=1e-5)
    assert beta_penalty(dataclasses.replace(cfg, beta_reg=0.0), ARCH, jnp.int32(60)) == 0.0
    g = jax.grad(lambda arch: beta_penalty(cfg, arch, jnp.int32(60)))(ARCH)
    # d logsumexp / d logits = softmax: every logit is pushed down, the strongest hardest
    for t in ARCH:
        assert bool(jnp.all(g[t] > 0))
        assert int(jnp.argmax(g[t][0])) == int(jnp.argmax(ARCH[t][0]))


@pytest.mark.parametrize('field, value, fragment', [
    ('search.sampling', 'uniform', 'search.sampling'),
    ('search.beta_reg', -1.0, 'search.beta_reg'),
])
def test_bad_search_options_are_named(field, value, fragment):
    c = config_lib.nb201_config('smoke')
    c.update_from_flattened_dict({field: value})
    with pytest.raises(config_lib.ConfigError, match=fragment):
        config_lib.validate(c)


def test_a_hard_sample_needs_gumbel():
    c = config_lib.nb201_config('smoke')
    c.search.sampling = 'dirichlet'
    c.search.hard = True
    c.search.single_path = False
    with pytest.raises(config_lib.ConfigError, match='search.hard'):
        config_lib.validate(c)
