"""Test support: faults injected after a given weight step, through loop.STEP_CALLBACKS.

In-process: `loop.STEP_CALLBACKS.append(nan_at('search', 5))` (monkeypatch it). In a subprocess:
`python tests/fault_injection.py kill=warmup:1 --config ... --workdir ...` installs the fault, then runs
the train CLI with the remaining arguments.
"""
import os
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


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    from absl import app

    from asose_jax.run import loop
    from asose_jax import train
    faults = [a for a in sys.argv[1:] if '=' in a and not a.startswith('-')]
    loop.STEP_CALLBACKS.extend(parse(f) for f in faults)
    sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a not in faults]
    app.run(train.main)
