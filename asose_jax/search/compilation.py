"""XLA compile settings shared by the entry points and the steps: the persistent compilation cache,
and unoptimised compiles for programs that run rarely (network init, evaluation), where on the CPU
XLA's optimisation passes cost more compile time than they save in run time."""
from __future__ import annotations

import contextlib
import functools
import os

import jax


def enable_compilation_cache(path: str | None = None) -> None:
    """Persistent XLA cache: a second run of the same shapes skips compilation."""
    path = path or os.environ.get('ASOSE_JAX_CACHE', os.path.expanduser('~/.cache/asose_jax/xla'))
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@contextlib.contextmanager
def fast_compile(enabled: bool = True):
    """When enabled, programs first called inside compile with most XLA optimisations off (restored after)."""
    before = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', before or enabled)
    try:
        yield
    finally:
        jax.config.update('jax_disable_most_optimizations', before)


def rarely_run(jitted):
    """`jitted` (a jax.jit function, or a function that compiles when called) called under
    fast_compile on the CPU backend, so that it compiles unoptimised wherever it is first called;
    used for init and evaluation programs. On accelerators,
    where unfused programs are much slower and compiles are quicker, it is left as it is."""
    @functools.wraps(jitted)
    def call(*args, **kwargs):
        with fast_compile(jax.default_backend() == 'cpu'):
            return jitted(*args, **kwargs)
    return call
