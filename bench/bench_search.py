"""A short timed DARTS-space search (C=16, 8 cells, batch 64) on synthetic CIFAR-shaped data split
25k/25k, run through the real phase driver; the 50-epoch time is EXTRAPOLATED from the epochs run.

    python bench/bench_search.py --epochs 2 [--mixture] [--train 6400] [--out bench/RESULTS.md]

`--train` below 50,000 runs shorter epochs (a smaller split) and scales the per-epoch time to the
25k/25k split for the extrapolation (the 2,000-image evaluation is scaled with it, an overestimate).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asose_jax.report import monitor  # noqa: E402
from asose_jax.run import context, search_phase  # noqa: E402
from asose_jax.run import config as config_lib  # noqa: E402
from asose_jax.search.optim import arch_transform, weight_transform  # noqa: E402
from asose_jax.search.train_state import create_train_state  # noqa: E402
from asose_jax.space.network import init_search_variables  # noqa: E402
from bench._common import machine, report  # noqa: E402
from configs import cifar10  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--train', type=int, default=50000)
    p.add_argument('--mixture', action='store_true', help='soft mixture instead of hard single path')
    p.add_argument('--depthwise', default='conv', help="'conv' (grouped conv) or 'shift' (shifted multiply-adds)")
    p.add_argument('--pointwise', default='conv', help="1x1 convs: 'conv' (nn.Conv) or 'dot' (matmul: model.pointwise_impl)")
    p.add_argument('--remat-branch', action='store_true', help='model.remat_branch: rematerialise each op and edge input')
    p.add_argument('--materialize-edge-grads', action='store_true',
                   help="model.materialize_edge_grads: each edge's input gradient as its own fusion (CPU mixture)")
    p.add_argument('--compute-dtype', default='float32')
    p.add_argument('--out', default='')
    args = p.parse_args()
    c = cifar10.get_config()
    c.data.source, c.data.synthetic_train, c.data.synthetic_test = 'synthetic', args.train, 2000
    c.search.warmup_epochs, c.search.search_epochs = 0, 50
    c.model.depthwise_impl, c.model.compute_dtype, c.progress = args.depthwise, args.compute_dtype, False
    c.model.pointwise_impl, c.model.remat_branch = args.pointwise, args.remat_branch
    c.model.materialize_edge_grads = args.materialize_edge_grads
    if args.mixture:
        c.search.hard, c.search.single_path = False, False
    config_lib.validate(c)
    splits = context.load_splits(c)
    workdir = tempfile.mkdtemp(prefix='bench_search_')
    ctx = context.RunContext(c, workdir, splits['weights'], splits['arch'], splits['train'], splits['eval'],
                            context.key_streams(0), monitor.MetricsWriter(workdir))
    spec = config_lib.network_spec(c)
    variables = init_search_variables(spec, ctx.keys['init'], 32, args.depthwise)
    n = splits['weights'].num_batches(c.search.batch_size)
    state = create_train_state(variables, weight_transform(config_lib.weight_opt_config(c), 50 * n),
                               arch_transform(config_lib.arch_opt_config(c)))
    t0 = time.time()
    search_phase.search_phase(ctx, 'search', spec, state, args.epochs)
    wall = time.time() - t0
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:  # epoch records; events (warnings, growth) have 'event'
        recs = [r for r in map(json.loads, f) if 'event' not in r]
    compile_s = float(recs[0]['first_step_s'])  # timing fields are NaN (written "nan") without timed steps
    ips = float(recs[-1]['images_per_sec'])
    print(f'wall {wall:.1f} s, first step {compile_s:.1f} s, last epoch {ips:.1f} img/s', flush=True)
    scale = 25000 / len(splits['weights'])  # per-epoch time at the 25k/25k split
    per_epoch = (wall - compile_s) / args.epochs * scale
    report([
        f'### Timed DARTS-space search ({time.strftime("%Y-%m-%d %H:%M")})', '',
        machine() + f"; C=16, 8 cells, batch 64, synthetic {len(splits['weights'])}/{len(splits['arch'])} split, "
        f"{'soft mixture' if args.mixture else 'hard single path'}, depthwise {args.depthwise}, "
        f"pointwise {args.pointwise}{', remat_branch' if args.remat_branch else ''}"
        f"{', materialize_edge_grads' if args.materialize_edge_grads else ''}, {args.compute_dtype}", '',
        f'- ran {args.epochs} search epochs ({n} weight steps + {n} arch steps each, eval on 2,000 images) in '
        f'{wall:.0f} s; first step (compile) {compile_s:.0f} s',
        f"- weight-step throughput {ips:.0f} img/s (last epoch, arch steps interleaved)",
        f'- **EXTRAPOLATED** 50-epoch search: {compile_s + 50 * per_epoch:.0f} s = {(compile_s + 50 * per_epoch) / 3600:.2f} h '
        f'(compile + 50 x {per_epoch:.0f} s/epoch{f", epoch time scaled x{scale:.2f} from the smaller split" if scale != 1 else ""}; '
        'not measured end to end)', ''], args.out)


if __name__ == '__main__':
    main()
