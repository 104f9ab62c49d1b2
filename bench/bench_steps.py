"""Side-by-side step benchmark: the JAX search step vs the PyTorch twin's, same config, same machine,
alternating in rounds; images/s for each and the ratio, JAX compile seconds, peak memory, and the
fast-path ratios (hard single path vs mixture, bf16 vs fp32, remat memory/time).

    python bench/bench_steps.py --shapes smoke,darts --steps weight,arch --paths soft,hard \
        --variants fp32,bf16,remat --iters 5 --rounds 3 [--no-torch] [--out bench/RESULTS.md]

Variants other than fp32 run for the weight step only (they change the weight step the most), unless
--variant-steps names more (e.g. `--variant-steps weight,arch` for the single path's remat_branch).
JAX steps include augmentation (crop/flip) and the Gumbel draw; the torch step takes a
pre-normalised float batch and draws its Gumbel noise with F.gumbel_softmax. The torch twin runs in each of
--torch-formats (default: NCHW and channels_last, both in every round), and JAX/torch divides by the faster.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import _common as C  # noqa: E402


def torch_runner(spec, variables, batch_size, size, which, path, memory_format, device, bn='stock'):
    """A closure running `iters` torch steps; built from parity.* (the PyTorch twin) in `memory_format`
    ('contiguous': NCHW, or 'channels_last': NHWC strides, faster for torch's CPU convolutions).

    bn='stock': the twin's BNs run as stock nn.BatchNorm2d (running_var='unbiased'), as a torch user's DARTS
    code does. Train-mode outputs and gradients are the same in bn='parity', which normalises with
    hand-written ops so that its running variance matches Flax's (slower: bench/RESULTS.md)."""
    import torch
    import torch.nn.functional as F
    from parity.convert import flax_to_torch
    from parity.torch_network import TorchSearchNetwork

    net = TorchSearchNetwork(spec, running_var={'stock': 'unbiased', 'parity': 'biased'}[bn])
    net.load_state_dict(flax_to_torch(spec, jax.device_get(variables)))
    net = net.to(device)
    fmt = torch.channels_last if memory_format == 'channels_last' else torch.contiguous_format
    net = net.to(memory_format=fmt)
    net.train()
    arch = jax.device_get(variables['params']['arch'])
    alphas = {t: torch.tensor(np.asarray(a), device=device, requires_grad=True) for t, a in arch.items()}
    wopt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    aopt = torch.optim.Adam(alphas.values(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, spec.num_classes, (batch_size,), device=device)
    hard, single = path != 'soft', path == 'hard'
    for p in net.parameters():  # the arch step differentiates the logits only, as the JAX one does
        p.requires_grad_(which == 'weight')

    def step():
        if which == 'weight':
            ew = {t: F.gumbel_softmax(a.detach(), tau=5.0, hard=hard) for t, a in alphas.items()}
            loss = F.cross_entropy(net(x, ew, single_path=single), y)
            wopt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            wopt.step()
        else:
            ew = {t: F.gumbel_softmax(a, tau=5.0, hard=hard) for t, a in alphas.items()}
            loss = F.cross_entropy(net(x, ew, single_path=single), y)
            aopt.zero_grad(set_to_none=True)
            loss.backward()
            aopt.step()

    def run(iters):
        for _ in range(iters):
            step()
        if device != 'cpu':
            torch.cuda.synchronize()

    def peak_mb():
        if device != 'cpu':
            return torch.cuda.max_memory_allocated() / 2 ** 20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide (JAX included)

    if device != 'cpu':
        torch.cuda.reset_peak_memory_stats()
    return run, peak_mb


def bench_case(shape, which, path, variant, args):
    spec, batch_size, size = C.shape_spec(shape)
    variables, wtx, atx, state = C.make_state(spec, size)
    variables = jax.device_get(variables)  # host copy: the JAX steps donate (delete) the state's buffers
    depthwise = C.depthwise_for(args.depthwise)
    cfg = C.step_config(path, variant, depthwise, args.pointwise)
    jitted = C.search_step(spec, cfg, wtx, atx, which)
    b, key = C.batch(batch_size, size), jax.random.key(1)
    comp = C.compile_step(jitted, state, b, key)
    # progress on stderr, so that a run stopped by its time limit (a GPU lease) still shows where it got
    print(f'# compiled {shape} {which} {path} {variant} ({depthwise}, {args.pointwise}) in {comp.compile_s:.1f} s, '
          f'{comp.temp_mb:.0f} MB temporaries', file=sys.stderr, flush=True)

    def jax_run(st, iters):
        for _ in range(iters):
            st, m = comp.fn(st, b, key)
        jax.block_until_ready((st, m))
        return st

    state = jax_run(state, args.warmup)
    torch_runs, peak = {}, None
    for f in args.torch_formats:
        torch_runs[f], peak = torch_runner(spec, variables, batch_size, size, which, path, f, args.torch_device,
                                           args.torch_bn)
        torch_runs[f](args.warmup)
    jax_ips, torch_ips = [], {f: [] for f in torch_runs}
    for _ in range(args.rounds):  # alternate so that machine noise hits both sides alike
        t0 = time.perf_counter()
        state = jax_run(state, args.iters)
        jax_ips.append(batch_size * args.iters / (time.perf_counter() - t0))
        for f, run in torch_runs.items():
            t0 = time.perf_counter()
            run(args.iters)
            torch_ips[f].append(batch_size * args.iters / (time.perf_counter() - t0))
    j = C.median(jax_ips)
    by_format = {f: C.median(v) for f, v in torch_ips.items()}
    # the ratio is against the faster torch format: the baseline a torch user would pick
    best = max(by_format, key=by_format.get) if by_format else None
    t = by_format[best] if best else float('nan')
    row = {'shape': shape, 'step': which, 'path': path, 'variant': variant, 'depthwise': depthwise, 'batch': batch_size,
           'jax_ips': j, 'torch_ips': t, 'torch_format': best, 'torch_ips_by_format': by_format,
           'ratio': j / t if best else float('nan'),
           'compile_s': comp.compile_s, 'jax_temp_mb': comp.temp_mb, 'jax_total_mb': comp.total_mb,
           'torch_peak_mb': peak() if peak else float('nan')}
    print(json.dumps(row), flush=True)
    return row


def fmt(x, digits=1):
    return '-' if x is None or (isinstance(x, float) and not np.isfinite(x)) else f'{x:.{digits}f}'


def by_format(row) -> str:
    return ', '.join(f'{f} {fmt(v)}' for f, v in row['torch_ips_by_format'].items()) or '-'


def tables(rows, args) -> str:
    torch_name = 'off' if not args.torch_formats else (
        f'torch {__import__("torch").__version__} on {args.torch_device}, {args.torch_bn} BN, memory formats '
        f'{" and ".join(args.torch_formats)} (torch img/s: the faster one, which JAX/torch divides by)')
    out = [f'### Step benchmark ({time.strftime("%Y-%m-%d %H:%M")})', '',
           f'{C.machine()}; {torch_name}; pointwise={args.pointwise}; iters={args.iters} x rounds={args.rounds} '
           '(median of rounds)', '',
           '| shape | step | path | variant | depthwise | JAX img/s | torch img/s | torch by format | JAX/torch '
           '| JAX compile s | JAX temp MB | JAX total MB | torch peak MB |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        out.append(f"| {r['shape']} (b{r['batch']}) | {r['step']} | {r['path']} | {r['variant']} | {r['depthwise']} | {fmt(r['jax_ips'])} "
                   f"| {fmt(r['torch_ips'])} | {by_format(r)} | {fmt(r['ratio'], 2)} | {fmt(r['compile_s'])} | {fmt(r['jax_temp_mb'])} "
                   f"| {fmt(r['jax_total_mb'])} | {fmt(r['torch_peak_mb'])} |")
    idx = {(r['shape'], r['step'], r['path'], r['variant']): r for r in rows}
    fast = []
    for (shape, step, path, variant), r in idx.items():
        base = idx.get((shape, step, 'soft', variant))
        if path == 'hard' and base:
            fast.append(f"| {shape} | {step} | hard single path vs soft mixture ({variant}) | "
                        f"{fmt(r['jax_ips'] / base['jax_ips'], 2)}x img/s | {fmt(r['jax_temp_mb'] / base['jax_temp_mb'], 2)}x temp mem |")
        base = idx.get((shape, step, path, 'fp32'))
        if variant != 'fp32' and base:
            fast.append(f"| {shape} | {step} | {variant} vs fp32 ({path}) | {fmt(r['jax_ips'] / base['jax_ips'], 2)}x img/s "
                        f"| {fmt(r['jax_temp_mb'] / base['jax_temp_mb'], 2)}x temp mem "
                        f"({fmt(base['jax_temp_mb'] - r['jax_temp_mb'])} MB saved) |")
    if fast:
        out += ['', '| shape | step | fast path | speed | memory |', '|---|---|---|---|---|'] + fast
    return '\n'.join(out) + '\n'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--shapes', default='smoke,darts')
    p.add_argument('--steps', default='weight,arch')
    p.add_argument('--paths', default='soft,hard')
    p.add_argument('--variants', default='fp32,bf16,remat',
                   help='fp32 (always run, unless --skip-fp32) covers every --steps x --paths case; '
                   'the others for the --variant-steps only')
    p.add_argument('--variant-steps', default='weight', help='the steps the non-fp32 variants run for')
    p.add_argument('--skip-fp32', action='store_true', help='only the --variants other than fp32 (e.g. remat '
                   'where the fp32 step does not fit in memory)')
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--depthwise', default='auto', help="'shift', 'conv' or 'auto' (see _common.depthwise_for)")
    p.add_argument('--no-torch', action='store_true', help='JAX half only')
    p.add_argument('--torch-formats', default='contiguous,channels_last',
                   help='torch memory formats, each timed in every round; JAX/torch divides by the faster')
    p.add_argument('--torch-bn', default='stock', choices=('stock', 'parity'),
                   help="the twin's BNs: stock nn.BatchNorm2d kernels, or the parity mode's hand-written ops")
    p.add_argument('--torch-device', default='auto', help="'cpu', 'cuda' or 'auto'")
    p.add_argument('--pointwise', default='conv', help="1x1 convs: 'conv' (nn.Conv, the default) or 'dot' (matmul: model.pointwise_impl)")
    p.add_argument('--out', default='', help='append the markdown tables to this file')
    p.add_argument('--json', default='', help='write the raw rows here')
    args = p.parse_args()
    if args.torch_device == 'auto' and not args.no_torch:
        import torch
        args.torch_device = 'cuda' if torch.cuda.is_available() else 'cpu'
    split = lambda s: [x for x in s.split(',') if x]  # noqa: E731
    args.torch_formats = [] if args.no_torch else C.torch_formats(args.torch_formats)
    cases = [(s, st, pa, 'fp32') for s in split(args.shapes) for st in split(args.steps) for pa in split(args.paths)
             if not args.skip_fp32]
    cases += [(s, st, pa, v) for s in split(args.shapes) for st in split(args.variant_steps)
              for pa in split(args.paths) for v in split(args.variants) if v != 'fp32']
    rows = [bench_case(*c, args) for c in cases]
    text = tables(rows, args)
    print(text)
    if args.out:
        with open(args.out, 'a') as f:
            f.write('\n' + text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'machine': C.machine(), 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
