"""Test support: faults injected after a given weight step, through loop.STEP_CALLBACKS.

In-process: `loop.STEP_CALLBACKS.append(nan_at('search', 5))` (monkeypatch it). In a subprocess:
`python tests/fault_injection.py kill=warmup:1 --config ... --workdir ...` installs the fault, then runs
the train CLI with the remaining arguments. `compiles=PATH` there also persists every program, however
quick its compile, and appends one JSON line per persistent-cache lookup to PATH ({"module", "hit"}),
written as it happens so that a killed run keeps its record.
"""
import json
import logging
import os
import re
import signal
import sys

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _at(phase: str, step: int):
    return lambda p, state: p == phase and int(state.step) == step


def signal_at(phase: str, step: int, signum: int):
    """Sends `signum` to this process right after weight step `step` of `phase`."""
    hit = _at(phase, step)

    def callback(p, state):
        if hit(p, state):
            os.kill(os.getpid(), signum)
        return state
    return callback


def nan_at(phase: str, step: int):
    """Turns the weights into NaN after that step, once per process (as a non-finite gradient would)."""
    hit, done = _at(phase, step), []

    def callback(p, state):
        if hit(p, state) and not done:
            done.append(True)
            nan = jax.tree_util.tree_map(lambda x: x * jnp.nan, state.params['weights'])
            state = state.replace(params={**state.params, 'weights': nan})
        return state
    return callback


def parse(fault: str):
    """'kill=PHASE:STEP', 'term=PHASE:STEP' or 'nan=PHASE:STEP' -> a step callback."""
    kind, _, where = fault.partition('=')
    phase, _, step = where.rpartition(':')
    if kind == 'nan':
        return nan_at(phase, int(step))
    return signal_at(phase, int(step), {'kill': signal.SIGKILL, 'term': signal.SIGTERM}[kind])


class CacheLookups(logging.Handler):
    """Appends {"module": name, "hit": bool} to `path` for each persistent-cache lookup jax logs."""

    PATTERN = re.compile(r"^(Persistent compilation cache hit|PERSISTENT COMPILATION CACHE MISS) for '([^']+)'")

    def __init__(self, path: str):
        super().__init__(logging.DEBUG)
        self.path = path

    def emit(self, record):
        match = self.PATTERN.match(record.getMessage())
        if match:
            with open(self.path, 'a') as f:
                f.write(json.dumps({'module': match.group(2), 'hit': match.group(1).startswith('Persistent')}) + '\n')


def record_cache_lookups(path: str, train_module) -> None:
    """Logs every lookup to `path` and lowers the entry point's minimum compile time to persist to 0."""
    compiler_log = logging.getLogger('jax._src.compiler')
    compiler_log.setLevel(logging.DEBUG)
    compiler_log.addHandler(CacheLookups(path))
    enable = train_module.enable_compilation_cache

    def enable_all(*args, **kwargs):
        enable(*args, **kwargs)
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    train_module.enable_compilation_cache = enable_all


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    from absl import app

    from asose_jax.run import loop
    from asose_jax import train
    options = [a for a in sys.argv[1:] if '=' in a and not a.startswith('-')]
    for option in options:
        if option.startswith('compiles='):
            record_cache_lookups(option.partition('=')[2], train)
        else:
            loop.STEP_CALLBACKS.append(parse(option))
    sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a not in options]
    app.run(train.main)
