"""Does the search beat chance? Runs a search config over seeds and judges what it found.

    python bench/search_quality.py --config configs/nb201.py:smoke --seeds 0,1,2 --out /tmp/sq
    python bench/search_quality.py --config configs/cifar10.py:smoke --seeds 0,1,2 --random 8 --out /tmp/sq
    ... --set search.beta_reg=1.0 --set search.sampling=softmax   (any config field, repeatable)

NAS-Bench-201 space: each seed's derived cell is looked up in the benchmark's ground truth (200-epoch
test accuracy on CIFAR-10, percentile among all 15,625 cells); reported with the mean, min and max over
seeds and the table's own random-cell distribution. DARTS space: each searched genotype, K genotypes
drawn uniformly from the same space and the published DARTS_V2 and GDAS cells are trained from scratch
with the config's optimize recipe on the same data and seed; the searched ones' percentile among the
random ones and their margin over the random median are reported. Writes `search_quality.json` and
`search_quality.png` into --out.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import textwrap
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asose_jax.benchmarks import nats_bench  # noqa: E402
from asose_jax.data import cifar as data_lib  # noqa: E402
from asose_jax.report import monitor  # noqa: E402
from asose_jax.run import context  # noqa: E402
from asose_jax.run import config as config_lib  # noqa: E402
from asose_jax.run.retrain import FixedTrainConfig, train_fixed  # noqa: E402
from asose_jax.search.compilation import enable_compilation_cache  # noqa: E402
from asose_jax.space.genotype import Genotype, named_genotypes, random_genotype  # noqa: E402
from asose_jax.train import run  # noqa: E402
from bench._common import machine  # noqa: E402

PUBLISHED = ('DARTS_V2', 'GDAS_V1')


def load_config(arg: str, overrides: list[str]):
    """`path.py[:variant]` -> its get_config(variant), with `field=value` overrides (Python literals)."""
    path, _, variant = arg.partition(':')
    spec = importlib.util.spec_from_file_location('search_quality_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(variant or None)
    for item in overrides:
        key, _, value = item.partition('=')
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare string
        c.update_from_flattened_dict({key: value})
    return c


def search_seed(c, seed: int, workdir: str, reuse: bool = False) -> dict:
    """One search run (its own optimize phase off: candidates are judged below, all alike). reuse: a
    finished run in `workdir` (its summary.json) of the same config is read instead of run again."""
    c = c.copy_and_resolve_references()
    c.seed = seed
    c.optimize.epochs = 0
    c.progress = False
    c.checkpoint.fresh = not reuse
    summary = run(c, workdir)  # reuse: resumes the finished run, which only re-derives and re-writes
    lines = monitor.MetricsWriter(workdir, tensorboard=False).read()
    search = [r for r in lines if r.get('phase') == 'search' and 'event' not in r]
    wall = None if reuse else summary['wall_s']  # a resumed run's summary times only the resume
    return {'seed': seed, 'genotype': summary['genotype'], 'wall_s': wall,
            'search_val_acc_first': search[0]['val_acc'] if search else None,
            'search_val_acc_last': search[-1]['val_acc'] if search else None,
            'param_free_normal': search[-1].get('param_free_normal') if search else None,
            **{k: v for k, v in summary.items() if k.startswith(('nb201_arch', 'cifar10', 'cifar100', 'imagenet'))}}


def retrain(c, genotype, workdir: str) -> float:
    """The config's optimize recipe on the whole training split, evaluated on the eval split (seed c.seed)."""
    ds = data_lib.load(c.data)
    train = data_lib.DeviceSplit.from_numpy(ds.train_images, ds.train_labels)
    test = data_lib.DeviceSplit.from_numpy(ds.test_images, ds.test_labels)
    os.makedirs(workdir, exist_ok=True)
    ctx = context.RunContext(c, workdir, train, train, train, test, context.key_streams(c.seed),
                            monitor.MetricsWriter(workdir, tensorboard=False))
    cfg = FixedTrainConfig.from_config(c, data_lib.DATASETS[c.data.dataset])
    _, _, record = train_fixed(ctx, genotype, cfg, phase='retrain')
    return float(record['val_acc'])


def recipe(c) -> dict:
    """What makes two retrains comparable: the optimize section, the data and the retrain seed."""
    return {'optimize': c.optimize.to_dict(), 'data': c.data.to_dict(), 'seed': c.seed}


def spread(values) -> dict:
    v = np.asarray(values, np.float64)
    return {'mean': float(v.mean()), 'min': float(v.min()), 'max': float(v.max()), 'std': float(v.std())}


def judge_nb201(searched: list[dict]) -> dict:
    table = nats_bench.load()
    acc = table.accuracy['cifar10']
    return {'searched_cifar10_test': spread([s['cifar10_test'] for s in searched]),
            'searched_percentile': spread([s['cifar10_percentile'] for s in searched]),
            'random_cell_cifar10_test': {'mean': float(acc.mean()), 'median': float(np.median(acc)),
                                         'best': float(acc.max())}, 'table': table.source}


def judge_darts(c, searched: list[dict], k: int, out: str, random_seed: int, reuse: str | None) -> dict:
    """Retrains every candidate alike. `reuse`: a previous search_quality.json of the same optimize recipe
    and data, whose random and published results are taken instead of retraining them."""
    rng = np.random.default_rng(random_seed)
    prims = tuple(c.model.primitives)
    candidates = [('random', random_genotype(rng, c.model.steps, c.model.multiplier, prims)) for _ in range(k)]
    candidates += [(name, named_genotypes()[name]) for name in PUBLISHED]
    results = []
    if reuse:
        with open(reuse) as f:
            old = json.load(f)
        if old['recipe'] != recipe(c):
            raise SystemExit(f'--reuse-random {reuse}: its optimize recipe or data differ from this config')
        results = [r for r in old['judge']['candidates'] if not r['kind'].startswith('searched')]
        candidates = []
    candidates += [(f'searched_seed{s["seed"]}', s['genotype']) for s in searched]
    for i, (kind, g) in enumerate(candidates):
        g = Genotype.from_string(g) if isinstance(g, str) else g
        t0 = time.time()
        acc = retrain(c, g, os.path.join(out, f'retrain_{kind}_{i:02d}'))
        results.append({'kind': kind, 'genotype': str(g), 'retrain_acc': acc, 'retrain_s': time.time() - t0,
                        'param_free_normal': monitor.genotype_stats(g)['param_free_normal']})
        print(f'[search_quality] {kind}: retrain acc {acc:.4f} ({time.time() - t0:.0f}s)', flush=True)
    rand = np.array([r['retrain_acc'] for r in results if r['kind'] == 'random'])
    for r in results:
        r['percentile_among_random'] = float(100.0 * np.mean(rand < r['retrain_acc']))
        r['above_random_median'] = float(r['retrain_acc'] - np.median(rand))
    ours = [r for r in results if r['kind'].startswith('searched')]
    return {'candidates': results, 'random': spread(rand), 'random_median': float(np.median(rand)),
            'searched_retrain_acc': spread([r['retrain_acc'] for r in ours]),
            'searched_percentile_median': float(np.median([r['percentile_among_random'] for r in ours])),
            'searched_above_random_median_median': float(np.median([r['above_random_median'] for r in ours]))}


def plot(result: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if result['space'] == 'nb201':
        acc = nats_bench.load().accuracy['cifar10']
        ax.hist(acc[acc > 80], bins=60, color='#cccccc', label='all 15,625 cells (>80%)')
        for s in result['seeds']:
            ax.axvline(s['cifar10_test'], color='#d62728', lw=1.5)
        ax.axvline(float('nan'), color='#d62728', label='searched (one line per seed)')
        ax.set_xlabel('NAS-Bench-201 CIFAR-10 test accuracy, 200 epochs (%)')
    else:
        cands = result['judge']['candidates']
        kinds = ['random'] + list(PUBLISHED) + sorted({r['kind'] for r in cands if r['kind'].startswith('searched')})
        for x, kind in enumerate(kinds):
            ys = [100 * r['retrain_acc'] for r in cands if r['kind'] == kind]
            ax.scatter([x] * len(ys), ys, color='#d62728' if kind.startswith('searched') else '#555555')
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha='right', fontsize=8)
        ax.set_ylabel('retrain accuracy on the eval split (%)')
    ax.set_title(textwrap.fill(result['label'], 110), fontsize=7)
    ax.legend(fontsize=8) if result['space'] == 'nb201' else None
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown_row(result: dict) -> str:
    """One line of the RESULTS.md ablation table: the overrides and what they did, per seed and spread."""
    gain = result['supernet_val_gain']
    wall = result['search_wall_s'] or {'mean': float('nan'), 'max': float('nan')}
    if result['space'] == 'nb201':
        acc = result['judge']['searched_cifar10_test']
        per_seed = ', '.join(f"{s['seed']}: {s['cifar10_test']:.2f}" for s in result['seeds'])
        quality = f"{acc['mean']:.2f} (min {acc['min']:.2f}, max {acc['max']:.2f}; {per_seed})"
    else:
        j = result['judge']
        per_seed = ', '.join(f"{r['kind'][len('searched_seed'):]}: {100 * r['retrain_acc']:.1f} "
                             f"(p{r['percentile_among_random']:.0f}, pf {r['param_free_normal']})"
                             for r in j['candidates'] if r['kind'].startswith('searched'))
        quality = (f"median p{j['searched_percentile_median']:.0f}, "
                   f"{100 * j['searched_above_random_median_median']:+.1f} pts vs random median "
                   f"{100 * j['random_median']:.1f} ({per_seed})")
    return (f"| {' '.join(result['overrides']) or '(config as is)'} | {quality} | "
            f"{100 * gain['mean']:+.1f} (min {100 * gain['min']:+.1f}) | {wall['mean']:.0f} (max {wall['max']:.0f}) |")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='e.g. configs/nb201.py:smoke')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--set', action='append', default=[], help='config override FIELD=VALUE (repeatable)')
    p.add_argument('--random', type=int, default=8, help='DARTS space: random genotypes retrained')
    p.add_argument('--random-seed', type=int, default=0, help='DARTS space: draws the random genotypes')
    p.add_argument('--reuse-random', default=None, help='DARTS space: a search_quality.json whose random and '
                   'published retrains (same recipe and data) are reused')
    p.add_argument('--reuse-searches', action='store_true', help='searches already finished in --out (same '
                   'config; a changed one is refused by the resume check) are resumed, not run again')
    p.add_argument('--retrain-seed', type=int, default=0, help='DARTS space: the seed of every retrain')
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    c = load_config(args.config, args.set)
    config_lib.validate(c)
    os.makedirs(args.out, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(',')]
    t0 = time.time()
    searched = [search_seed(c, s, os.path.join(args.out, f'seed{s}'), args.reuse_searches) for s in seeds]
    space = c.model.space
    retrain_c = c.copy_and_resolve_references()
    retrain_c.seed = args.retrain_seed
    judge = judge_nb201(searched) if space == 'nb201' else judge_darts(retrain_c, searched, args.random, args.out,
                                                                      args.random_seed, args.reuse_random)
    walls = [s['wall_s'] for s in searched]
    result = {'config': args.config, 'overrides': args.set, 'space': space, 'machine': machine(),
              'label': f'{args.config} {" ".join(args.set)} seeds {args.seeds}', 'seeds': searched,
              'search_wall_s': spread([s['wall_s'] for s in searched]) if None not in walls else None,
              'supernet_val_gain': spread([s['search_val_acc_last'] - s['search_val_acc_first'] for s in searched]),
              'judge': judge, 'recipe': recipe(retrain_c), 'total_s': time.time() - t0}
    with open(os.path.join(args.out, 'search_quality.json'), 'w') as f:
        json.dump(monitor._plain(result), f, indent=1)
    plot(result, os.path.join(args.out, 'search_quality.png'))
    print(json.dumps({k: result[k] for k in ('label', 'search_wall_s', 'supernet_val_gain')}, indent=1))
    print(json.dumps({k: v for k, v in judge.items() if k != 'candidates'}, indent=1))
    for s in searched:
        print(s['seed'], s.get('nb201_arch', s['genotype']), s.get('cifar10_test', ''))
    print(markdown_row(result))
    return result


if __name__ == '__main__':
    enable_compilation_cache()
    main()
