"""The run configuration: defaults (DARTS search protocol), the smoke variant, up-front validation,
and the translation into the frozen specs the steps are compiled for."""
from __future__ import annotations

import contextlib
import sys

import ml_collections
from ml_collections.config_dict import placeholder

from asose_jax.data.cifar import DataError, DATASETS, SOURCES
from asose_jax.search import execution, stability
from asose_jax.search.gumbel import SCHEDULES
from asose_jax.search.optim import ArchOptConfig, WeightOptConfig
from asose_jax.search.steps import COMPUTE_DTYPES, SearchStepConfig
from asose_jax.space.genotype import PRIMITIVES
from asose_jax.space.nb201_genotype import NB201_OPS
from asose_jax.space.ops import DEPTHWISE_IMPLS, POINTWISE_IMPLS
from asose_jax.space.spec import NetworkSpec, SPACES

EVAL_MODES = ('softmax', 'argmax')
SEARCH_SAMPLING = ('gumbel', 'softmax', 'dirichlet')


def base_config(dataset: str = 'cifar10') -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = _data_defaults(dataset)
    c.model = _model_defaults()
    c.search = _search_defaults()
    c.weight_optim = dict(lr=0.025, lr_min=0.001, momentum=0.9, weight_decay=3e-4, grad_clip=5.0)
    c.arch_optim = dict(lr=3e-4, b1=0.5, b2=0.999, weight_decay=1e-3)
    c.optimize = dict(
        epochs=50, batch_size=96, C=0, layers=0,  # 0 = the search network's C / layers
        lr=0.025, lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
        cutout=16, drop_path=0.0, auxiliary=False, aux_weight=0.4,
        depthwise_impl='shift')   # 2-2.5x faster than grouped conv for the derived net on CPU
    c.growth = _growth_defaults()
    c.parallel = dict(data_parallel=False)  # True: batch sharded over all local devices, state replicated
    c.sweep = dict(seeds=1, arch_lrs='')     # asose_jax.sweep: seeds per lr; lrs comma-separated, '' = arch_optim.lr
    c.monitor = _monitor_defaults()
    c.checkpoint = dict(           # asose_jax/run/checkpoint.py; README "Resume and faults"
        enabled=True, max_to_keep=3,  # latest checkpoints kept (plus the best by val_acc and the pre-growth ones)
        fresh=False,                  # True: move an existing workdir aside (<workdir>.old-<time>) and start over
        nan_retries=3)                # non-finite metrics: roll the epoch back with the weight lr halved, this often
    c.progress = True
    return c


def _data_defaults(dataset: str) -> dict:
    return dict(source='download',  # one of SOURCES; download: the official tarball, fetched once into the cache
                dataset=dataset,
                dir='',             # cifar_dir: the python-layout folder; tfds: optional data_dir
                cache_dir='',       # download: '' = $ASOSE_DATA_CACHE, else ~/.cache/asose_jax/data
                url='',             # download: '' = the official URL (a mirror must serve the same file)
                md5='',             # download: '' = the official archive's md5
                train_portion=0.5,  # weight half / arch half of the training set
                split_seed=0,
                cutout=0,           # search: no cutout (DARTS); optimize has its own
                image_size=32,      # CIFAR images are average-pooled down to this
                synthetic_train=2048, synthetic_test=512,
                max_train=0, max_test=0, eval_batch_size=256)  # max_train/max_test: 0 = all


def _model_defaults() -> dict:
    return dict(space='darts',            # 'darts' | 'nb201' (NAS-Bench-201 cells and macro network)
                C=16, layers=8, steps=4, multiplier=4, stem_multiplier=3,
                cells_per_stage=5,        # nb201: N cells in each of the three stages
                primitives=list(PRIMITIVES),
                compute_dtype='float32',  # 'bfloat16': bf16 compute, fp32 master weights/opt state/BN stats
                remat=False,              # recompute each cell's activations in the backward pass
                # the execution form (same parameters and values): chosen by asose_jax/search/execution.py from
                # the backend when 'auto' / None; a value overrides the choice
                depthwise_impl='auto',    # 'conv' (grouped conv) | 'shift' (k*k shifted multiply-adds)
                pointwise_impl='auto',    # 'conv' | 'dot' (1x1 convs as matmuls)
                remat_branch=placeholder(bool),    # recompute each candidate op in the backward pass
                unroll_edges=placeholder(bool),    # unroll the cells' edge scans
                materialize_edge_grads=placeholder(bool))  # each edge's input gradient in its own fusion


def _search_defaults() -> dict:
    return dict(batch_size=64, warmup_epochs=10, search_epochs=50,
                arch_every=1,       # one arch step per this many weight steps
                sampling='gumbel',  # edge weights: 'gumbel' samples, 'softmax' (DARTS, no noise), 'dirichlet' (DrNAS)
                beta_reg=0.0,       # beta-DARTS beta-decay weight on the arch loss (ramped 0 -> this over the search)
                hard=True,          # straight-through one-hot Gumbel samples
                single_path=True,   # evaluate only the sampled op (GDAS); needs hard
                tau_max=10.0, tau_min=0.1, tau_schedule='exponential',
                unrolled=False,     # second-order arch gradient
                eval_mode='argmax',
                fast_compile=False)  # compile warmup/search steps with most XLA optimisations off: on the
                                     # 2-core CPU ~25% faster to compile, ~3x slower steps (bench/RESULTS.md)


def _growth_defaults() -> dict:
    return dict(
        trigger='none',           # none | schedule | plateau
        schedule='',              # 'EPOCH:KIND,...': grow after these search epochs (0-based), e.g. '0:depth,1:width'
        kind='auto',              # plateau growth: one of growth.KINDS or 'auto' (see growth_policy.choose_kind)
        plateau_window=3,         # epochs of val_acc looked at
        plateau_threshold=0.005,  # val_acc units (a fraction): 0.005 = half a percentage point
        max_growths=4, max_cells=20, max_C=64, max_params=5_000_000,  # caps: a growth past one is skipped and logged
        width_factor=1.5, deepen_stage=-1, attention_cell=-1,  # -1 = automatic choice
        branch_op='auto', branch_init_weight=1e-7, drop_path=0.1, dropout=0.1, prune_fraction=0.2,
        rollback_patience=2,      # epochs after a growth before comparing val_acc with the pre-growth value
        rollback_margin=0.02)     # roll back when val_acc fell by more than this (a fraction)


def _monitor_defaults() -> dict:
    """The stability monitor and collapse guard (asose_jax/search/stability.py)."""
    return dict(metric='val_acc',          # watched quality; every threshold below is in its units
                window=4,                  # epochs of the oscillation / divergence windows
                oscillation_threshold=0.03,  # std of val_acc about its trend over the window (0.03 = 3 points)
                plateau_patience=5, plateau_threshold=0.005,  # val_acc fraction: 0.005 = half a percentage point
                degradation_threshold=0.05,  # drop below the best val_acc of the phase
                divergence_rise=0.1,       # train loss up every epoch of the window, by > 10% in total
                on_oscillation='none',     # 'none' | 'lower_arch_lr' | 'raise_tau'
                arch_lr_factor=0.5, tau_factor=1.5,
                on_plateau='grow',         # 'none' | 'grow' (with growth.kind, by run.grower.Grower): ASO-SE
                on_divergence='none',      # 'none' | 'rollback' (caller) | 'stop'
                max_param_free=4,          # parameter-free ops allowed in the derived normal cell
                collapse_remedy='none',    # 'none' | 'cap_skip' (P-DARTS) | 'raise_arch_wd'
                max_skip=2, arch_wd_factor=3.0)


SMOKE_VARIANTS = ('smoke',)


def smoke_growth_policy(c: ml_collections.ConfigDict) -> None:
    """Plateau-triggered growth in a CPU-sized search of a few epochs on the bundled subset. The supernet's
    val_acc is measured on 1,017 held-out images, whose standard error at 30-50% accuracy is ~1.5 points:
    a best-of-2-epochs gain under 2 points is noise, so it counts as a plateau. One growth: each grown
    shape compiles its weight and arch steps anew (~20-60 s on a 2-core CPU), and the run must stay short."""
    c.monitor.update(dict(on_plateau='grow', plateau_patience=2, plateau_threshold=0.02))
    c.growth.max_growths = 1


def smoke_overrides(c: ml_collections.ConfigDict) -> None:
    """A CPU-sized run (README, "Measured"): 16x16 images, a small supernet (on the CPU its execution form
    is the CPU recipe: asose_jax/search/execution.py) searched as a soft mixture with plateau-triggered
    growth (smoke_growth_policy), a small derived net. Search quality of this recipe: bench/RESULTS.md."""
    if c.data.dataset == 'cifar10':  # the bundled real-image subset
        c.data.source, c.data.dir = 'cifar_dir', '../shared/data/cifar10-subset'
    else:  # no bundled subset: the downloaded archive, cut to the subset's size
        c.data.max_train, c.data.max_test = 4068, 1017
    c.data.update(dict(eval_batch_size=512, image_size=16))
    c.model.update(dict(C=4, layers=3))
    # the NB201 smoke search's algorithm (one for both spaces): the soft mixture with beta-decay,
    # evaluated as its mixture; the GDAS single path collapsed the normal cell to parameter-free ops
    c.search.update(dict(warmup_epochs=2, search_epochs=8, sampling='softmax', hard=False, single_path=False,
                         eval_mode='softmax', beta_reg=5.0))
    smoke_growth_policy(c)
    c.search.update(dict(batch_size=64, arch_every=2, tau_max=5.0, tau_min=1.0))
    c.arch_optim.lr = 3e-3
    c.optimize.update(dict(epochs=6, batch_size=64, C=12, layers=5, lr=0.05, cutout=0))


def nb201_config(arg: str | None, dataset: str = 'cifar10') -> ml_collections.ConfigDict:
    """NAS-Bench-201 search. The default is the benchmark's GDAS protocol (AutoDL-Projects
    `configs/nas-benchmark/algos/GDAS.config` and `scripts-search/NAS-Bench-201-algos/GDAS.sh`): the
    CIFAR-10 training set split in halves, C=16, N=5 cells per stage, batch 64, 250 epochs, SGD 0.025
    cosine to 0.001, momentum 0.9, wd 5e-4 (the benchmark adds Nesterov momentum, not done here), clip 5;
    arch Adam 3e-4, betas (0.5, 0.999), wd 1e-3; Gumbel tau 10 -> 0.1 linearly. The optimize phase is
    the benchmark's training: 200 epochs, batch 256, SGD 0.1 cosine to 0, wd 5e-4 (Nesterov not done).
    'smoke': the CPU-sized search on the bundled real-image subset (see nb201_smoke_overrides)."""
    c = base_config(dataset=dataset)
    c.model.update(dict(space='nb201', C=16, cells_per_stage=5, primitives=list(NB201_OPS)))
    c.search.update(dict(batch_size=64, warmup_epochs=0, search_epochs=250, hard=True, single_path=True,
                         tau_max=10.0, tau_min=0.1, tau_schedule='linear'))
    c.weight_optim.update(dict(lr=0.025, lr_min=0.001, momentum=0.9, weight_decay=5e-4, grad_clip=5.0))
    c.arch_optim.update(dict(lr=3e-4, b1=0.5, b2=0.999, weight_decay=1e-3))
    c.optimize.update(dict(epochs=200, batch_size=256, lr=0.1, lr_min=0.0, weight_decay=5e-4, cutout=0,
                           C=0, layers=0, depthwise_impl='conv'))
    c.monitor.max_param_free = 3   # of the cell's 6 edges
    if arg == 'smoke':
        nb201_smoke_overrides(c)
    elif arg:
        raise ValueError(f'configs/nb201.py: unknown variant {arg!r}; allowed: smoke')
    return c


def nb201_smoke_overrides(c: ml_collections.ConfigDict) -> None:
    """The CPU-sized NAS-Bench-201 search on the bundled CIFAR-10 subset (16x16 images, C=8, two cells per
    stage); judged by the benchmark's ground truth (summary.json), so the optimize phase is short.
    The search is the soft mixture (DARTS, first order) with beta-decay regularisation, an arch lr scaled
    up for a search of ~700 arch steps instead of DARTS' ~20,000, and the supernet evaluated as its mixture.
    Each choice was decided on a seed outside 0-2 (bench/RESULTS.md, "Search quality")."""
    c.data.update(dict(source='cifar_dir', dir='../shared/data/cifar10-subset', eval_batch_size=512, image_size=16))
    c.model.update(dict(C=8, cells_per_stage=2))
    c.search.update(dict(warmup_epochs=2, search_epochs=20, sampling='softmax', hard=False, single_path=False,
                         eval_mode='softmax', beta_reg=5.0))
    c.arch_optim.lr = 3e-3
    smoke_growth_policy(c)  # growth widens a stage (the kinds an NB201 network can grow: growth.policy)
    c.optimize.update(dict(epochs=4, batch_size=64, lr=0.05))


def variant_config(dataset: str, arg: str | None, config_file: str) -> ml_collections.ConfigDict:
    """The body of every `configs/<dataset>.py:get_config(arg)`: the base config, or a smoke variant."""
    c = base_config(dataset=dataset)
    if arg in SMOKE_VARIANTS:
        smoke_overrides(c)
    elif arg:
        raise ValueError(f'{config_file}: unknown variant {arg!r}; allowed: {SMOKE_VARIANTS}')
    return c


class ConfigError(ValueError):
    """A config value out of range; the message names the field and what is allowed."""


@contextlib.contextmanager
def exit_on_user_error():
    """The CLIs' handling of a bad config value or bad data: its message is one `error:` line saying what
    to do, and the process exits with status 2 (no traceback)."""
    try:
        yield
    except (ConfigError, DataError) as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        sys.exit(2)


def _check(ok: bool, field: str, value, allowed: str):
    if not ok:
        raise ConfigError(f'config.{field}={value!r} is invalid; allowed: {allowed}')


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks every field the run reads, before any data is loaded or anything compiles; the sections in
    this order, as the first bad field is the one reported."""
    _check(isinstance(c.seed, int) and c.seed >= 0, 'seed', c.seed, 'an integer >= 0')
    _validate_data(c.data)
    _validate_model(c)
    _check(isinstance(c.parallel.data_parallel, bool), 'parallel.data_parallel', c.parallel.data_parallel,
           'True (shard the batch over all local devices) or False')
    _check(isinstance(c.sweep.seeds, int) and c.sweep.seeds >= 1, 'sweep.seeds', c.sweep.seeds, 'an integer >= 1')
    o = c.optimize
    _check(o.depthwise_impl in DEPTHWISE_IMPLS, 'optimize.depthwise_impl', o.depthwise_impl, str(DEPTHWISE_IMPLS))
    _validate_search(c.search)
    _validate_training(c)
    validate_growth(c)
    if 'checkpoint' in c:
        for f, low in (('max_to_keep', 1), ('nan_retries', 0)):
            k = c.checkpoint[f]
            _check(isinstance(k, int) and k >= low, f'checkpoint.{f}', k, f'an integer >= {low}')


def _validate_data(d: ml_collections.ConfigDict) -> None:
    _check(d.source in SOURCES, 'data.source', d.source, str(SOURCES))
    _check(d.dataset in DATASETS, 'data.dataset', d.dataset, str(tuple(DATASETS)))
    if d.source == 'cifar_dir':
        _check(bool(d.dir), 'data.dir', d.dir, 'a folder in the official CIFAR python layout')
    _check(d.source != 'download' or not d.dir, 'data.dir', d.dir,
           "'' with data.source=download (a folder of your own: add --config.data.source=cifar_dir)")
    _check(not d.md5 or (len(d.md5) == 32 and all(ch in '0123456789abcdefABCDEF' for ch in d.md5)), 'data.md5',
           d.md5, "'' (the official archive's) or 32 hex digits")
    _check(0.0 < d.train_portion < 1.0, 'data.train_portion', d.train_portion, 'a fraction in (0, 1)')
    _check(d.cutout >= 0, 'data.cutout', d.cutout, 'an integer >= 0 (0 = off)')
    _check(d.image_size >= 8 and d.image_size % 4 == 0 and (d.source == 'synthetic' or 32 % d.image_size == 0),
           'data.image_size', d.image_size, 'a multiple of 4, >= 8; for CIFAR a divisor of 32 (average-pooled)')
    for f in ('synthetic_train', 'synthetic_test', 'eval_batch_size'):
        _check(d[f] >= 1, f'data.{f}', d[f], 'an integer >= 1')
    for f in ('max_train', 'max_test'):
        _check(d[f] >= 0, f'data.{f}', d[f], 'an integer >= 0 (0 = all)')


def _validate_model(c: ml_collections.ConfigDict) -> None:
    """Shape, ops and execution form of the supernet."""
    m = c.model
    _check(m.C >= 1 and m.C % 2 == 0, 'model.C', m.C, 'an even integer >= 2 (FactorizedReduce halves it)')
    _check(m.layers >= 1, 'model.layers', m.layers, 'an integer >= 1')
    _check(m.steps >= 1, 'model.steps', m.steps, 'an integer >= 1')
    _check(1 <= m.multiplier <= m.steps, 'model.multiplier', m.multiplier, f'1..model.steps ({m.steps})')
    _check(m.stem_multiplier >= 1, 'model.stem_multiplier', m.stem_multiplier, 'an integer >= 1')
    _check(m.space in SPACES, 'model.space', m.space, str(tuple(SPACES)))
    ops = SPACES[m.space]
    bad = [p for p in m.primitives if p not in ops]
    _check(not bad and len(m.primitives) >= 1 and len(set(m.primitives)) == len(m.primitives),
           'model.primitives', list(m.primitives), f'distinct names from {list(ops)} (space {m.space!r})')
    if m.space == 'nb201':
        _check(m.cells_per_stage >= 1, 'model.cells_per_stage', m.cells_per_stage, 'an integer >= 1')
    _check(any(p != 'none' for p in m.primitives), 'model.primitives', list(m.primitives),
           "at least one op other than 'none' (derive picks the strongest non-none op)")
    _check(m.depthwise_impl in ('auto',) + DEPTHWISE_IMPLS, 'model.depthwise_impl', m.depthwise_impl,
           str(('auto',) + DEPTHWISE_IMPLS))
    _check(m.pointwise_impl in ('auto',) + POINTWISE_IMPLS, 'model.pointwise_impl', m.pointwise_impl,
           str(('auto',) + POINTWISE_IMPLS))
    _check(m.compute_dtype in COMPUTE_DTYPES, 'model.compute_dtype', m.compute_dtype, str(COMPUTE_DTYPES))
    _check(isinstance(m.remat, bool), 'model.remat', m.remat, 'True or False')
    for f in ('remat_branch', 'unroll_edges', 'materialize_edge_grads'):
        _check(m[f] is None or isinstance(m[f], bool), f'model.{f}', m[f], 'None (chosen: asose_jax/search/execution.py), '
               'True or False')


def _validate_search(s: ml_collections.ConfigDict) -> None:
    _check(s.batch_size >= 1, 'search.batch_size', s.batch_size, 'an integer >= 1')
    for f in ('warmup_epochs', 'search_epochs'):
        _check(s[f] >= 0, f'search.{f}', s[f], 'an integer >= 0')
    _check(s.arch_every >= 1, 'search.arch_every', s.arch_every, 'an integer >= 1')
    _check(not s.single_path or s.hard, 'search.single_path', s.single_path,
           'False unless search.hard=True (a soft sample has no single op)')
    _check(s.tau_max > 0 and s.tau_min > 0, 'search.tau_max/tau_min', (s.tau_max, s.tau_min), 'positive numbers')
    _check(s.tau_schedule in SCHEDULES, 'search.tau_schedule', s.tau_schedule, str(SCHEDULES))
    _check(s.eval_mode in EVAL_MODES, 'search.eval_mode', s.eval_mode, str(EVAL_MODES))
    _check(s.sampling in SEARCH_SAMPLING, 'search.sampling', s.sampling, str(SEARCH_SAMPLING))
    _check(s.sampling == 'gumbel' or not s.hard, 'search.hard', s.hard,
           "False unless search.sampling='gumbel' (only a Gumbel sample has a one-hot form)")
    _check(s.beta_reg >= 0, 'search.beta_reg', s.beta_reg, 'a number >= 0 (0 = off)')


def _validate_training(c: ml_collections.ConfigDict) -> None:
    """The weight and arch optimisers of the search, then the derived network's training (optimize)."""
    w, a, o = c.weight_optim, c.arch_optim, c.optimize
    _check(w.lr > 0 and 0 <= w.lr_min <= w.lr, 'weight_optim.lr/lr_min', (w.lr, w.lr_min), 'lr > 0, 0 <= lr_min <= lr')
    _check(0 <= w.momentum < 1, 'weight_optim.momentum', w.momentum, '[0, 1)')
    _check(w.weight_decay >= 0 and w.grad_clip > 0, 'weight_optim.weight_decay/grad_clip',
           (w.weight_decay, w.grad_clip), 'weight_decay >= 0, grad_clip > 0')
    _check(a.lr > 0, 'arch_optim.lr', a.lr, 'a positive number')
    _check(0 <= a.b1 < 1 and 0 <= a.b2 < 1, 'arch_optim.b1/b2', (a.b1, a.b2), '[0, 1)')
    _check(a.weight_decay >= 0, 'arch_optim.weight_decay', a.weight_decay, '>= 0')
    _check(o.epochs >= 0 and o.batch_size >= 1, 'optimize.epochs/batch_size', (o.epochs, o.batch_size),
           'epochs >= 0, batch_size >= 1')
    _check(o.C >= 0 and o.C % 2 == 0 and o.layers >= 0, 'optimize.C/layers', (o.C, o.layers),
           'C even >= 0 and layers >= 0 (0 = the search network\'s)')
    _check(o.lr > 0 and 0 <= o.lr_min <= o.lr, 'optimize.lr/lr_min', (o.lr, o.lr_min), 'lr > 0, 0 <= lr_min <= lr')
    _check(0 <= o.drop_path < 1, 'optimize.drop_path', o.drop_path, '[0, 1)')
    _check(o.cutout >= 0 and o.aux_weight >= 0, 'optimize.cutout/aux_weight', (o.cutout, o.aux_weight), '>= 0')


def validate_growth(c: ml_collections.ConfigDict) -> None:
    from asose_jax.growth import policy as growth_policy  # noqa: PLC0415 (growth imports the network; keep config light)
    g = c.growth
    _check(g.trigger in growth_policy.TRIGGERS, 'growth.trigger', g.trigger, str(growth_policy.TRIGGERS))
    _check(g.kind in growth_policy.KINDS_OR_AUTO, 'growth.kind', g.kind, str(growth_policy.KINDS_OR_AUTO))
    try:
        schedule = growth_policy.parse_schedule(g.schedule)
    except ValueError as e:
        raise ConfigError(f'config.growth.schedule={g.schedule!r} is invalid: {e}') from None
    late = [e for e in schedule if e >= c.search.search_epochs - 1]
    _check(not late, 'growth.schedule', g.schedule,
           f'search epochs 0..{c.search.search_epochs - 2} (a growth needs at least one search epoch after it)')
    _check(g.trigger != 'schedule' or schedule, 'growth.schedule', g.schedule, "at least one 'EPOCH:KIND' entry")
    space_kinds = growth_policy.SPACE_KINDS[c.model.space]
    for field, kinds in (('growth.kind', [g.kind]), ('growth.schedule', list(schedule.values()))):
        wrong = [k for k in kinds if k != 'auto' and k not in space_kinds]
        _check(not wrong, field, g[field.split('.')[1]],
               f"'auto' or kinds that a model.space={c.model.space!r} network can grow: {list(space_kinds)}")
    _check(g.plateau_window >= 2, 'growth.plateau_window', g.plateau_window, 'an integer >= 2 (epochs)')
    _check(0 <= g.plateau_threshold < 1, 'growth.plateau_threshold', g.plateau_threshold,
           'a val_acc fraction in [0, 1), e.g. 0.005 = half a percentage point')
    _check(g.max_growths >= 0 and g.max_cells >= 1 and g.max_C >= 2 and g.max_params >= 1,
           'growth.max_growths/max_cells/max_C/max_params', (g.max_growths, g.max_cells, g.max_C, g.max_params),
           'max_growths >= 0, the caps >= 1')
    _check(g.width_factor > 1, 'growth.width_factor', g.width_factor, 'a number > 1')
    _check(g.branch_op == 'auto' or g.branch_op in PRIMITIVES, 'growth.branch_op', g.branch_op,
           f"'auto' or one of {list(PRIMITIVES)}")
    _check(0 < g.branch_init_weight < 1e-2, 'growth.branch_init_weight', g.branch_init_weight, '(0, 0.01)')
    _check(0 <= g.drop_path < 1 and 0 <= g.dropout < 1, 'growth.drop_path/dropout', (g.drop_path, g.dropout),
           'rates in [0, 1)')
    _check(0 < g.prune_fraction < 1, 'growth.prune_fraction', g.prune_fraction, '(0, 1)')
    _check(g.rollback_patience >= 1 and 0 <= g.rollback_margin < 1, 'growth.rollback_patience/margin',
           (g.rollback_patience, g.rollback_margin), 'patience >= 1 epochs, margin a val_acc fraction in [0, 1)')
    _validate_monitor(c)


def _validate_monitor(c: ml_collections.ConfigDict) -> None:
    """The monitor section: MonitorConfig checks each field and names it in its message."""
    try:
        stability.MonitorConfig.from_config(c.monitor)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e


def network_spec(c: ml_collections.ConfigDict) -> NetworkSpec:
    m = c.model
    if m.space == 'nb201':
        return NetworkSpec.nb201(C=m.C, cells_per_stage=m.cells_per_stage, num_classes=DATASETS[c.data.dataset],
                                 primitives=tuple(m.primitives))
    return NetworkSpec.darts(C=m.C, layers=m.layers, num_classes=DATASETS[c.data.dataset], steps=m.steps,
                             multiplier=m.multiplier, stem_multiplier=m.stem_multiplier,
                             primitives=tuple(m.primitives))


def search_step_config(c: ml_collections.ConfigDict, phase: str, n_batches: int) -> SearchStepConfig:
    """Warmup trains weights on uniform edge weights; search samples from the logits, its temperature
    annealed over the search epochs (`n_batches` weight steps each) from the step after warmup."""
    s = c.search
    return SearchStepConfig(
        sampling='uniform' if phase == 'warmup' else s.sampling, hard=s.hard, single_path=s.single_path,
        beta_reg=s.beta_reg, tau_max=s.tau_max, tau_min=s.tau_min, tau_schedule=s.tau_schedule,
        tau_steps=max(s.search_epochs * n_batches, 1),
        tau_start=s.warmup_epochs * n_batches if phase == 'search' else 0,
        cutout=c.data.cutout, unrolled=s.unrolled, unrolled_lr=c.weight_optim.lr,
        unrolled_wd=c.weight_optim.weight_decay, eval_mode=s.eval_mode, compute_dtype=c.model.compute_dtype,
        remat=c.model.remat, **execution_form(c))


def execution_form(c: ml_collections.ConfigDict) -> dict:
    """The model's execution-form fields, 'auto' / None resolved for this backend (asose_jax/search/execution.py)."""
    return execution.resolve(c.model, c.search.fast_compile)


def weight_opt_config(c: ml_collections.ConfigDict) -> WeightOptConfig:
    return WeightOptConfig(**c.weight_optim.to_dict())


def arch_opt_config(c: ml_collections.ConfigDict) -> ArchOptConfig:
    return ArchOptConfig(**c.arch_optim.to_dict())

