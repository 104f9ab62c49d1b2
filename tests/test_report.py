"""End to end: a tiny synthetic run through train.run (phases wiring, monitor, TensorBoard), then
`python -m asose_jax.report` on its workdir and on a hand-made workdir with growth events."""
import dataclasses
import importlib.util
import json
import os
import time

import numpy as np
import pytest

from asose_jax.report import page as report
from asose_jax.run.config import base_config
from asose_jax.search import stability
from asose_jax.space.genotype import Genotype

TINY_PRIMITIVES = ['none', 'max_pool_3x3', 'skip_connect', 'avg_pool_3x3']  # parameter-free: compiles fast


def tiny_config():
    c = base_config()
    c.data.update(source='synthetic', image_size=8, synthetic_train=64, synthetic_test=16, eval_batch_size=16)  # as tests/ckpt_tiny_config.py: shared compiles
    c.model.update(C=4, layers=2, steps=2, multiplier=2, primitives=TINY_PRIMITIVES)
    c.search.update(batch_size=16, warmup_epochs=1, search_epochs=2)
    c.optimize.update(epochs=1, batch_size=32, C=4, layers=2, cutout=0)
    # make the monitor act in two epochs: every search epoch after the first is a plateau (-> grow,
    # not applied at the last search epoch), and any parameter-free op in the normal cell is a collapse (-> cap skips)
    c.monitor.update(plateau_patience=1, plateau_threshold=1.0, on_plateau='grow',
                     max_param_free=0, collapse_remedy='cap_skip', max_skip=0)
    c.progress = False
    return c


def forced_actions(assess):
    """assess plus the two phase-local actions at the last search epoch (2 epochs are too few for a
    real oscillation), so the run exercises their wiring; at the last epoch no recompile follows."""
    def wrapped(history, cfg):
        a = assess(history, cfg)
        last = [r for r in history if 'event' not in r][-1]
        if (last['phase'], last['epoch']) != ('search', 1):
            return a
        extra = (stability.Action('lower_arch_lr', 'oscillation', 'forced by the test', cfg.arch_lr_factor),
                 stability.Action('raise_tau', 'oscillation', 'forced by the test', cfg.tau_factor))
        return dataclasses.replace(a, actions=a.actions + extra)
    return wrapped


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    from asose_jax.train import run
    workdir = tmp_path_factory.mktemp('tiny_run')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stability, 'assess', forced_actions(stability.assess))
        run(tiny_config(), str(workdir))
    return workdir


def lines(workdir):
    return [json.loads(line) for line in open(workdir / 'metrics.jsonl')]


def test_run_writes_monitor_metrics(run_dir):
    records = [r for r in lines(run_dir) if 'event' not in r]
    assert [r['phase'] for r in records] == ['warmup', 'search', 'search', 'optimize']
    s = records[2]
    for key in ('lr', 'arch_lr', 'tau', 'entropy_normal', 'entropy_reduce', 'health', 'param_free_normal',
                'images_per_sec', 'op_weight/normal/skip_connect', 'op_weight/reduce/avg_pool_3x3'):
        assert key in s, key
    assert 0 < s['lr'] < records[1]['lr'] < 0.025 and s['arch_lr'] == 3e-4
    assert np.isclose(sum(s[f'op_weight/reduce/{op}'] for op in TINY_PRIMITIVES), 1.0)
    assert s['param_free_normal'] == 4  # 2 nodes x 2 edges, every op parameter-free; the cap leaves no skip
    assert 'skip_connect' not in [op for op, _ in Genotype.from_string(s['genotype']).normal]


def test_monitor_events_logged(run_dir):
    events = [r for r in lines(run_dir) if 'event' in r]
    collapse = [e for e in events if e['event'] == 'collapse_warning']
    assert collapse and all(e['remedy'] == 'cap_skip' and e['applied'] for e in collapse)
    acts = [e for e in events if e['event'] == 'monitor_action']
    assert [(e['phase'], e['epoch'], e['action'], e['applied']) for e in acts] == [
        ('search', 1, 'grow', False), ('search', 1, 'lower_arch_lr', True), ('search', 1, 'raise_tau', True)]
    assert 'plateau' in acts[0]['reason'] and acts[0]['handled_by'] == 'growth'  # last epoch: nothing to grow into
    assert acts[1]['arch_lr'] == pytest.approx(1.5e-4) and acts[2]['tau_scale'] == pytest.approx(1.5)
    assert all(e['phase'] == 'search' for e in collapse)  # warmup logits are untrained: no warning


def test_genotype_files_hold_alphas(run_dir):
    d = json.load(open(run_dir / 'genotypes' / 'search_epoch001.json'))
    a = np.array(d['alphas']['normal'])
    assert a.shape == (5, 4) and np.allclose(a.sum(1), 1.0) and d['primitives'] == TINY_PRIMITIVES
    assert d['capped'] and Genotype.from_string(d['raw_genotype']) is not None


def test_tensorboard_events(run_dir):
    from test_monitor import read_events, scalars
    # train.run leaves the writer open; tensorboardX's thread writes within flush_secs=1
    deadline = time.time() + 15
    while 'optimize/loss' not in (s := scalars(read_events(run_dir / 'tensorboard'))) and time.time() < deadline:
        time.sleep(0.5)
    assert [step for step, _ in s['search/val_acc']] == [1, 2] and [st for st, _ in s['optimize/loss']] == [3]
    assert 'search/op_weight/normal/skip_connect' in s and 'search/arch_lr' in s and 'events/monitor_action' in s


def test_report_renders_from_run(run_dir):
    report.main([str(run_dir)])  # the CLI's entry point, in-process (a subprocess re-imports matplotlib)
    html = open(run_dir / 'report' / 'report.html').read()
    for png in ('curves.png', 'search_stats.png', 'op_weights.png', 'arch_heatmaps.png'):
        assert os.path.getsize(run_dir / 'report' / png) > 10_000 and f'src="{png}"' in html, png
    assert 'monitor_action' in html and 'collapse_warning' in html and 'node 0 =' in html
    has_visualize = importlib.util.find_spec('asose_jax.report.visualize') is not None  # cell pictures when it exists
    assert ('src="cells.png"' in html) == has_visualize == os.path.exists(run_dir / 'report' / 'cells.png')


def handmade_workdir(root):
    """warmup, search (with a growth event in the middle), optimize; alphas for the search epochs."""
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    prims = ['none', 'skip_connect', 'sep_conv_3x3']
    rows = [{'phase': 'warmup', 'epoch': 0, 'loss': 2.3, 'acc': 0.1, 'val_loss': 2.3, 'val_acc': 0.1, 'tau': 5.0}]
    os.makedirs(root / 'genotypes', exist_ok=True)
    g = Genotype(normal=(('sep_conv_3x3', 0), ('skip_connect', 1)), normal_concat=(2,),
                 reduce=(('sep_conv_3x3', 1), ('sep_conv_3x3', 0)), reduce_concat=(2,))
    for e in range(4):
        rows.append({'phase': 'search', 'epoch': e, 'loss': 2.0 - 0.1 * e, 'acc': 0.2 + 0.05 * e, 'val_loss': 2.1,
                     'val_acc': 0.2 + 0.04 * e, 'tau': 4.0 - e, 'lr': 0.02, 'arch_lr': 3e-4, 'health': 1.0,
                     'entropy_normal': 1.0, 'op_weight/normal/skip_connect': 0.3, 'op_weight/reduce/skip_connect': 0.2})
        if e == 1:
            rows.append({'event': 'growth', 'kind': 'widen', 'phase': 'search', 'epoch': 1})
        raw = {c: rng.uniform(size=(2, 3)) for c in ('normal', 'reduce')}
        alphas = {c: (a / a.sum(1, keepdims=True)).tolist() for c, a in raw.items()}
        json.dump({**g.to_dict(), 'string': str(g), 'alphas': alphas, 'primitives': prims},
                  open(root / 'genotypes' / f'search_epoch{e:03d}.json', 'w'))
    rows += [{'phase': 'optimize', 'epoch': e, 'loss': 1.5, 'acc': 0.4, 'val_loss': 1.6, 'val_acc': 0.38}
             for e in range(2)]
    with open(root / 'metrics.jsonl', 'w') as f:
        f.write('\n'.join(json.dumps(r) for r in rows) + '\n')
    return root, g


def test_report_on_handmade_workdir(tmp_path):
    root, g = handmade_workdir(tmp_path / 'w')
    records, events = report.load_history(str(root))
    assert [e['global_epoch'] for e in events] == [2] and len(records) == 7
    assert report.phase_spans(records) == [('warmup', 0, 0), ('search', 1, 4), ('optimize', 5, 6)]
    path = report.render(str(root))
    html = open(path).read()
    assert 'growth' in html and 'widen' in html
    assert os.path.exists(root / 'report' / 'arch_heatmaps.png')
    assert 'normal cell' in open(root / 'report' / 'cells.txt').read()
    assert report.final_genotype(str(root), report.load_alphas(str(root))) == g  # no genotype.json: last file
    assert report.edge_labels(5) == ['0>2', '1>2', '0>3', '1>3', '2>3']


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(report.ReportError, match='metrics.jsonl not found'):
        report.render(str(tmp_path))
    (tmp_path / 'metrics.jsonl').write_text('{"phase": "search"\n')
    with pytest.raises(report.ReportError, match='line 1 is not JSON'):
        report.render(str(tmp_path))
