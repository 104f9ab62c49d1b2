"""Checkpoints and resume: a run SIGKILLed once in each phase (warmup, search before and after a
growth, optimize), SIGTERMed once mid-epoch, and resumed each time ends bitwise equal to an
uninterrupted run; a corrupt latest checkpoint falls back; shape-changing overrides are refused;
NaN rolls back; max_to_keep holds."""
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from asose_jax.run import checkpoint, config, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'tests', 'ckpt_tiny_config.py')
sys.path.insert(0, os.path.join(ROOT, 'tests'))
import ckpt_tiny_config  # noqa: E402
import fault_injection  # noqa: E402

# weight steps: warmup 1..2, search 3..8 (growth after step 4), optimize 1..4 (its own counter).
# SIGKILL in every phase, after the growth too; SIGTERM mid-epoch (step 5 of search epoch 1's 5..6).
FAULTS = ('kill=warmup:1', 'kill=search:4', 'term=search:5', 'kill=search:6', 'kill=optimize:3')


def restore_raw(workdir):
    """(number, meta, state as saved) of the latest readable checkpoint."""
    return checkpoint.RunCheckpoints(workdir).restore_latest(lambda meta: None)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    from asose_jax.train import run
    workdir = tmp_path_factory.mktemp('reference')
    run(ckpt_tiny_config.get_config(), str(workdir))
    return workdir


def train_cmd(workdir, fault=None, compiles=None):
    """The train CLI in a subprocess, with `fault` ('kill=PHASE:STEP', ...) installed by tests/fault_injection.py;
    with `compiles` (a path), every program is persisted to a cache of the workdir's own (so that only these
    runs write it) and each cache lookup is recorded there."""
    cache = str(workdir.parent / 'jax_cache') if compiles else jax.config.jax_compilation_cache_dir
    env = {**os.environ, 'ASOSE_JAX_CACHE': cache,
           'JAX_DISABLE_MOST_OPTIMIZATIONS': '1', 'PYTHONPATH': ROOT}
    options = [o for o in (fault, compiles and f'compiles={compiles}') if o]
    launcher = [os.path.join(ROOT, 'tests', 'fault_injection.py'), *options] if options else ['-m', 'asose_jax.train']
    return subprocess.run([sys.executable, *launcher, '--config', CONFIG, '--workdir', str(workdir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def step_lookups(path) -> dict[str, list[bool]]:
    """Persistent-cache hits (True) and misses (False) of the search steps, from a `compiles` record."""
    out: dict[str, list[bool]] = {}
    for r in map(json.loads, open(path)):
        if r['module'] in ('jit_search_weight_step', 'jit_search_arch_step'):
            out.setdefault(r['module'], []).append(r['hit'])
    return out


def test_killed_in_every_phase_resumes_bitwise(reference, tmp_path):
    """...and the runs that resume the grown network load its steps from the persistent cache: the run that
    grew compiled and persisted them, and nothing of them is compiled again."""
    workdir = tmp_path / 'killed'
    for i, at in enumerate(FAULTS):
        r = train_cmd(workdir, at, compiles=tmp_path / f'compiles{i}.jsonl')
        if at.startswith('kill='):
            assert r.returncode == -signal.SIGKILL, (at, r.returncode, r.stderr[-3000:])
            continue
        # SIGTERM: the step finishes, a mid-epoch checkpoint is saved, the exit says how to resume
        assert r.returncode == 128 + signal.SIGTERM, (at, r.returncode, r.stderr[-3000:])
        assert 'Resume with the same command' in r.stderr, r.stderr[-3000:]
        _, meta, _ = restore_raw(workdir)
        assert (meta['phase'], meta['epoch'], meta['batch']) == ('search', 1, 1), meta
    resumed = [step_lookups(tmp_path / f'compiles{i}.jsonl') for i in (3, 4)]  # resume inside search epoch 1
    assert all(lookups['jit_search_weight_step'] for lookups in resumed), resumed
    assert resumed[1].get('jit_search_arch_step'), resumed  # kill=search:6 stops before an arch step
    assert all(hit for lookups in resumed for hits in lookups.values() for hit in hits), resumed
    r = train_cmd(workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resuming from checkpoint' in r.stdout
    _, meta_ref, ref = restore_raw(reference)
    _, meta, got = restore_raw(workdir)
    assert (meta['phase'], meta['epoch']) == (meta_ref['phase'], meta_ref['epoch']) == ('optimize', 2)
    leaves_ref, tree_ref = jax.tree_util.tree_flatten(ref)
    leaves, tree = jax.tree_util.tree_flatten(got)
    assert tree == tree_ref and len(leaves) > 10
    for a, b in zip(leaves, leaves_ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.load(open(workdir / 'genotype.json')) == json.load(open(reference / 'genotype.json'))
    grown = json.load(open(workdir / 'spec.json'))
    assert len(grown['cells']) == 3 and grown == json.load(open(reference / 'spec.json'))  # resumed grown
    epochs = [(r['phase'], r['epoch']) for r in map(json.loads, open(workdir / 'metrics.jsonl')) if 'event' not in r]
    assert epochs == [('warmup', 0), ('search', 0), ('search', 1), ('search', 2), ('optimize', 0), ('optimize', 1)]


def test_max_to_keep_and_pre_growth_on_disk(reference):
    kept = sorted(int(d) for d in os.listdir(reference / 'checkpoints') if d.isdigit())
    # 6 saves (1 warmup + 3 search + 2 optimize epochs): the latest 2 (max_to_keep) plus the best val_acc one
    assert kept[-2:] == [4, 5] and len(kept) <= 3
    assert os.listdir(reference / 'checkpoints_pre_growth') == ['0']


def test_growth_event_logged_and_function_preserving(reference):
    lines = [json.loads(line) for line in open(reference / 'metrics.jsonl')]
    growths = [r for r in lines if r.get('event') == 'growth']
    assert [(g['kind'], g['epoch']) for g in growths] == [('depth', 0)], growths
    g = growths[0]  # same eval logits after the growth, new weight step compiled once, sizes logged
    assert g['max_logit_change'] <= 1e-4 and g['compile_s'] > 0 and g['params_after'] > g['params_before'], g
    steps = g['compile_steps_s']  # both programs of the grown network compiled at the growth, timed apart
    assert sorted(steps) == ['arch_step', 'weight_step'] and min(steps.values()) > 0
    assert g['compile_s'] == pytest.approx(sum(steps.values()), abs=0.011)
    assert [r['cells'] for r in lines if r.get('phase') == 'search' and 'event' not in r] == [2, 3, 3]


def test_corrupt_latest_falls_back(reference, tmp_path, capsys):
    workdir = tmp_path / 'corrupt'
    shutil.copytree(reference, workdir)
    latest = max(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())
    for root, _, files in os.walk(workdir / 'checkpoints' / str(latest) / 'state'):
        for f in files:
            open(os.path.join(root, f), 'wb').write(b'garbage')
    number, meta, _ = restore_raw(workdir)
    assert number < latest and meta['phase'] == 'optimize'
    assert f'checkpoint {latest}' in capsys.readouterr().out


def test_incompatible_override_refused_then_fresh(reference, tmp_path):
    from asose_jax.train import run
    workdir = tmp_path / 'override'
    shutil.copytree(reference, workdir)
    c = ckpt_tiny_config.get_config()
    c.model.C = 8
    with pytest.raises(config.ConfigError, match=r"model\.C.*checkpoint\.fresh=True"):
        run(c, str(workdir))
    assert checkpoint.move_aside(str(workdir)) is not None and not workdir.exists()  # what fresh=True does
    assert [p for p in os.listdir(tmp_path) if p.startswith('override.old-')]


def test_nan_rolls_back_and_finishes(tmp_path, monkeypatch):
    from asose_jax.train import run
    c = ckpt_tiny_config.get_config()
    c.growth.trigger, c.search.search_epochs, c.optimize.epochs = 'none', 2, 1  # the rollback is in search epoch 1
    monkeypatch.setattr(loop, 'STEP_CALLBACKS', [fault_injection.nan_at('search', 5)])
    summary = run(c, str(tmp_path))
    events = [r for r in map(json.loads, open(tmp_path / 'metrics.jsonl')) if r.get('event') == 'nan_rollback']
    assert [(e['phase'], e['epoch'], e['lr_scale'], e['steps']) for e in events] == [('search', 1, 0.5, [5, 6])]
    assert np.isfinite(summary['val_acc'])


def test_monitor_actions_and_nan_rollback_compile_nothing(tmp_path, monkeypatch):
    """Hyper-parameters live in the state: a run whose monitor lowers the arch lr every search epoch, whose
    collapse remedy raises the arch weight decay and whose NaN guard halves the lr traces exactly the
    programs of the same run without them (a rebuilt step would trace, and compile, again)."""
    from jax._src import dispatch
    from asose_jax.train import run
    from jax._src import monitoring
    traces = []

    def listener(event, _secs, **_):
        if event == dispatch.JAXPR_TRACE_EVENT:
            traces.append(event)
    monitoring.register_event_duration_secs_listener(listener)

    def count(c, workdir, callbacks=()):
        monkeypatch.setattr(loop, 'STEP_CALLBACKS', list(callbacks))
        traces.clear()
        run(c, str(workdir))
        return len(traces), [r for r in map(json.loads, open(workdir / 'metrics.jsonl')) if 'event' in r]

    c = ckpt_tiny_config.get_config()
    c.growth.trigger, c.search.search_epochs, c.optimize.epochs = 'none', 4, 1
    count(c, tmp_path / 'warm')  # this process's first run also traces what is cached for later ones
    plain, _ = count(c, tmp_path / 'plain')
    c.monitor.update(window=3, oscillation_threshold=1e-9, on_oscillation='lower_arch_lr')
    c.monitor.update(max_param_free=0, collapse_remedy='raise_arch_wd')
    acted, events = count(c, tmp_path / 'acted', [fault_injection.nan_at('search', 5)])
    kinds = [e['event'] for e in events]
    assert 'nan_rollback' in kinds and 'monitor_action' in kinds and 'collapse_warning' in kinds, kinds
    monitoring.unregister_event_duration_listener(listener)
    assert acted == plain, (acted, plain)


def test_nan_retries_exhausted_names_phase_and_steps(tmp_path, monkeypatch):
    from asose_jax.train import run
    c = ckpt_tiny_config.get_config()
    c.checkpoint.nan_retries = 0
    monkeypatch.setattr(loop, 'STEP_CALLBACKS', [fault_injection.nan_at('warmup', 2)])
    with pytest.raises(FloatingPointError, match=r'warmup epoch 0, steps 1\.\.2'):
        run(c, str(tmp_path))


def test_execution_forms_do_not_block_a_resume():
    """Depthwise/pointwise form, remat and unrolled edges compute the same parameters: changing them (or a checkpoint
    written before a field existed) resumes; a shape field does not."""
    saved = checkpoint.config_dict(ckpt_tiny_config.get_config())
    del saved['model']['remat_branch'], saved['model']['pointwise_impl'], saved['model']['unroll_edges']
    del saved['model']['materialize_edge_grads']
    c = ckpt_tiny_config.get_config()
    c.model.depthwise_impl, c.model.pointwise_impl, c.model.remat_branch = 'shift', 'dot', True
    c.model.unroll_edges, c.model.materialize_edge_grads = True, True
    assert checkpoint.incompatible_fields(saved, checkpoint.config_dict(c)) == []
    c.model.C = 8
    assert checkpoint.incompatible_fields(saved, checkpoint.config_dict(c)) == ['model.C']


def test_checkpoint_without_hparams_restores_with_defaults(tmp_path):
    """A checkpoint written before the state held its hyper-parameters (format 1) still resumes."""
    from asose_jax.search.optim import ArchOptConfig, WeightOptConfig, arch_transform, weight_transform
    from asose_jax.search.train_state import create_train_state, with_hparams
    params = {'weights': {'w': np.arange(3, dtype=np.float32)}, 'arch': {'cell': np.ones((2, 2), np.float32)}}
    state = create_train_state({'params': params}, weight_transform(WeightOptConfig(), 10),
                               arch_transform(ArchOptConfig()))
    checkpoint.RunCheckpoints(str(tmp_path)).save(state.replace(hparams={}), {'format': 1, 'phase': 'search'})
    abstract = jax.eval_shape(lambda: with_hparams(state, lr_scale=0.5))
    _, meta, restored = checkpoint.RunCheckpoints(str(tmp_path)).restore_latest(lambda m: abstract)
    assert meta['format'] == 1 and sorted(restored.hparams) == sorted(state.hparams)
    assert all(float(v) == 1.0 for v in restored.hparams.values())
    np.testing.assert_array_equal(np.asarray(restored.params['weights']['w']), params['weights']['w'])


def test_data_archive_fields_do_not_block_a_resume():
    """data.url / md5 / cache_dir say where the same archive comes from: a checkpoint from before they
    existed, or with another mirror, resumes; another data.dir does not."""
    saved = checkpoint.config_dict(ckpt_tiny_config.get_config())
    for k in ('url', 'md5', 'cache_dir'):
        del saved['data'][k]
    c = ckpt_tiny_config.get_config()
    c.data.url, c.data.cache_dir = 'file:///mirror/cifar-10-python.tar.gz', '/elsewhere'
    assert checkpoint.incompatible_fields(saved, checkpoint.config_dict(c)) == []
    c.data.dir = '/other'
    assert checkpoint.incompatible_fields(saved, checkpoint.config_dict(c)) == ['data.dir']
