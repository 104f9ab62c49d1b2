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
    from asose_jax.space.spec import NetworkSpec
    return NetworkSpec.darts(C=4, layers=3)


# The test files by their measured cost (2-core CPU, `--durations`), heaviest first. With
# `--no-loadscope-reorder` (pyproject addopts) xdist hands files to the workers in this order,
# so the long ones start first and the short ones fill the gaps at the end (by default xdist
# orders files by their number of tests, which put the one-test e2e file last).
HEAVY_FIRST = ('test_e2e.py', 'test_checkpoint.py', 'test_growth.py', 'test_parity.py', 'test_steps.py',
               'test_evaluate.py', 'test_network.py', 'test_report.py', 'test_sweep.py', 'test_parallel.py')


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
