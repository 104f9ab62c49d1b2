"""Shared test set-up: unoptimised XLA (shape/semantics tests compile in seconds), a persistent
compilation cache, tiny specs, and the real-image folder from $ASOSE_CIFAR10_SUBSET."""
import os

import jax
import pytest

jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('ASOSE_JAX_CACHE', os.path.join(os.path.dirname(__file__), '..', '.cache', 'xla')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)

SUBSET = os.environ.get('ASOSE_CIFAR10_SUBSET',
                        os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'cifar10-subset'))


@pytest.fixture(scope='session')
def subset_dir():
    if not os.path.isdir(SUBSET):
        pytest.fail(f'real-image folder {SUBSET} missing: set ASOSE_CIFAR10_SUBSET')
    return SUBSET


@pytest.fixture(scope='session')
def tiny_spec():
    from asose_jax.spec import NetworkSpec
    return NetworkSpec.darts(C=4, layers=3)
