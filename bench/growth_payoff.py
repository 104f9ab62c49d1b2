"""Does growth pay its way? The default search (plateau-triggered growth) against the same search with growth
off, at the same wall-clock budget, over seeds:

    python bench/growth_payoff.py --config configs/cifar10.py:smoke --seeds 0,1,2 --out DIR
    python bench/growth_payoff.py --config configs/nb201.py:smoke --seeds 0,1,2 --out DIR

Per seed: (1) the growing search as configured; (2) the same search with growth off and the extra search
epochs that the growing run's extra time buys: its search time (epochs and growths) less what its epochs
would have cost at the ungrown network's epoch time, measured in the same run before its first growth.
Both are judged as bench/search_quality.py judges: in the NAS-Bench-201 space the derived cell's ground
truth; in the DARTS space the derived genotype retrained with the config's optimize recipe and evaluated on
the held-out split (same retrain seed for every candidate). Each run's search time is split into compile
(jax.monitoring's trace, lowering and compile durations, persistent-cache loads included) and the rest.
Every run of one invocation shares one persistent compilation cache, fresh in --out, so the first run of a
shape compiles it and later runs of that shape load it. Writes `growth_payoff.json` into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asose_jax.report import monitor  # noqa: E402
from asose_jax.run import config as config_lib  # noqa: E402
from asose_jax.search.compilation import enable_compilation_cache  # noqa: E402
from asose_jax.space.genotype import Genotype  # noqa: E402
from bench import search_quality as sq  # noqa: E402
from bench._common import machine  # noqa: E402

COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration', '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')
COMPILE_S = [0.0]
REGISTERED: list = []


def _on_duration(event: str, seconds: float, **_) -> None:
    if event in COMPILE_EVENTS:
        COMPILE_S[0] += seconds


def growth_off(c):
    c = c.copy_and_resolve_references()
    c.monitor.on_plateau, c.growth.trigger, c.growth.schedule = 'none', 'none', ''
    return c


def search(c, seed: int, workdir: str) -> dict:
    """One search (search_quality.search_seed) with its timings: search seconds (warmup excluded), compile
    seconds over the whole run, the growth events, and the ungrown network's epoch time."""
    before = COMPILE_S[0]
    out = sq.search_seed(c, seed, workdir)
    lines = monitor.MetricsWriter(workdir, tensorboard=False).read()
    epochs = [r for r in lines if r.get('phase') == 'search' and 'event' not in r]
    growths = [r for r in lines if r.get('event') == 'growth']
    first_growth = min((g['epoch'] for g in growths), default=len(epochs) - 1)
    ungrown = [r['epoch_s'] for r in epochs[1:first_growth + 1]] or [epochs[-1]['epoch_s']]
    return {**out, 'search_epochs': len(epochs), 'compile_s': COMPILE_S[0] - before,
            'search_s': sum(r['epoch_s'] for r in epochs) + sum(g['growth_s'] for g in growths),
            'first_epoch_s': epochs[0]['epoch_s'], 'ungrown_epoch_s': float(np.median(ungrown)),
            'growths': [{k: g.get(k) for k in ('epoch', 'kind', 'max_logit_change', 'compile_s', 'growth_s',
                                               'params_before', 'params_after')} for g in growths],
            'val_acc_by_epoch': [r['val_acc'] for r in epochs]}


def extra_epochs(grown: dict) -> int:
    """Search epochs the non-growing run gets on top: the growing run's search time beyond what its epochs
    would have taken ungrown, in ungrown epochs (the first epoch, which compiles, counted as measured)."""
    n, t = grown['search_epochs'], grown['ungrown_epoch_s']
    ungrown_cost = grown['first_epoch_s'] + (n - 1) * t
    return max(0, int(round((grown['search_s'] - ungrown_cost) / t)))


def judge(c, runs: list[dict], out: str, retrain_seed: int) -> None:
    """Adds 'result' to each run: NB201 ground truth, or the DARTS retrain accuracy on the held-out split."""
    for r in runs:
        if c.model.space == 'nb201':
            r['result'] = r.get('cifar10_test')
            continue
        rc = c.copy_and_resolve_references()
        rc.seed = retrain_seed
        r['result'] = 100 * sq.retrain(rc, Genotype.from_string(r['genotype']),
                                       os.path.join(out, f"retrain_{r['arm']}_seed{r['seed']}"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='e.g. configs/cifar10.py:smoke')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--set', action='append', default=[], help='config override FIELD=VALUE (repeatable)')
    p.add_argument('--retrain-seed', type=int, default=0, help='DARTS space: the seed of every retrain')
    p.add_argument('--cache', default='', help='persistent compilation cache (default: a fresh one in --out)')
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    c = sq.load_config(args.config, args.set)
    config_lib.validate(c)
    if c.monitor.on_plateau != 'grow' and c.growth.trigger == 'none':
        raise SystemExit(f'{args.config}: growth is off in this config; nothing to compare')
    os.makedirs(args.out, exist_ok=True)
    enable_compilation_cache(args.cache or os.path.join(args.out, 'xla_cache'))
    if not REGISTERED:  # main() may run more than once in a process (the tests)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        REGISTERED.append(True)
    runs = []
    for seed in (int(s) for s in args.seeds.split(',')):
        grown = {'arm': 'growing', **search(c, seed, os.path.join(args.out, f'growing_seed{seed}'))}
        fixed_c = growth_off(c)
        fixed_c.search.search_epochs += extra_epochs(grown)
        fixed = {'arm': 'fixed', **search(fixed_c, seed, os.path.join(args.out, f'fixed_seed{seed}'))}
        runs += [grown, fixed]
        print(f"[growth_payoff] seed {seed}: growing {grown['search_epochs']} epochs {grown['search_s']:.0f}s, "
              f"fixed {fixed['search_epochs']} epochs {fixed['search_s']:.0f}s", flush=True)
    judge(c, runs, args.out, args.retrain_seed)
    arms = {arm: [r for r in runs if r['arm'] == arm] for arm in ('growing', 'fixed')}
    result = {'config': args.config, 'overrides': args.set, 'space': c.model.space, 'machine': machine(),
              'runs': runs, **{f'{arm}_result': sq.spread([r['result'] for r in rs]) for arm, rs in arms.items()},
              **{f'{arm}_search_s': sq.spread([r['search_s'] for r in rs]) for arm, rs in arms.items()}}
    with open(os.path.join(args.out, 'growth_payoff.json'), 'w') as f:
        json.dump(monitor._plain(result), f, indent=1)
    for r in runs:
        print(f"{r['arm']:8s} seed {r['seed']}: {r['result']:.2f}  search {r['search_epochs']} epochs "
              f"{r['search_s']:.0f}s (compile {r['compile_s']:.0f}s over the run)  growths "
              f"{[(g['epoch'], g['kind'], g['max_logit_change']) for g in r['growths']]}")
    print(json.dumps({k: v for k, v in result.items() if k.endswith(('_result', '_search_s'))}, indent=1))
    return result


if __name__ == '__main__':
    main()
