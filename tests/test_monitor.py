"""MetricsWriter: JSON lines + TensorBoard events (read back from the event files), events, op weights."""
import glob
import json
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from asose_jax.report import monitor
from asose_jax.space.genotype import Genotype, PRIMITIVES, derive


def read_events(tb_dir):
    """Every Event in the TFRecord files of `tb_dir` (tensorboard is not installed: parse the
    record framing, uint64 length + crc, payload + crc, and decode with tensorboardX's proto)."""
    events = []
    for path in sorted(glob.glob(os.path.join(tb_dir, 'events.out.tfevents.*'))):
        data = open(path, 'rb').read()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack('<Q', data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


def scalars(events):
    out = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField('simple_value'):
                out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def texts(events):
    """tensorboardX's add_text(tag) stores tag + '/text_summary' for the text plugin."""
    return {v.tag.removesuffix('/text_summary'): (e.step, v.tensor.string_val[0].decode()) for e in events
            for v in e.summary.value if v.metadata.plugin_data.plugin_name == 'text'}


def test_writer_jsonl_and_tensorboard(tmp_path):
    w = monitor.MetricsWriter(str(tmp_path))
    w.write({'phase': 'warmup', 'epoch': 0, 'loss': 2.5, 'val_acc': 0.1, 'op_weight/normal/sep_conv_3x3': 0.125})
    w.write({'phase': 'search', 'epoch': 0, 'loss': np.float32(2.0), 'val_acc': 0.2, 'lr': 0.02,
             'genotype': 'G', 'bad': float('nan'), 'collapse': True})
    w.event('growth', kind='widen', C=8)
    w.close()
    lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    assert lines[1]['bad'] == 'nan' and lines[2] == {'event': 'growth', 'global_epoch': 1, 'kind': 'widen', 'C': 8}
    ev = read_events(tmp_path / 'tensorboard')
    s = scalars(ev)
    assert s['warmup/loss'] == [(0, 2.5)] and s['search/loss'] == [(1, 2.0)]
    assert s['warmup/op_weight/normal/sep_conv_3x3'] == [(0, 0.125)] and s['search/lr'][0][0] == 1
    assert np.isnan(s['search/bad'][0][1]) and 'search/collapse' not in s and 'search/epoch' not in s
    assert s['events/growth'] == [(1, 1.0)]
    t = texts(ev)
    assert t['search/genotype'][1] == 'G' and json.loads(t['events/growth'][1]) == {'kind': 'widen', 'C': 8}
    # a resumed writer continues the global epoch count
    assert monitor.MetricsWriter(str(tmp_path), tensorboard=False).global_epoch == 2
    with pytest.raises(ValueError, match='kind'):
        w.event('')


def test_op_weights_and_alphas_file(tmp_path):
    rng = np.random.default_rng(0)
    arch = {'normal': rng.normal(size=(14, 8)), 'reduce': rng.normal(size=(14, 8))}
    w = monitor.op_weights(arch, PRIMITIVES)
    assert len(w) == 16 and np.isclose(sum(v for k, v in w.items() if k.startswith('op_weight/normal/')), 1.0)
    p = monitor.softmax(arch['normal'])
    assert np.isclose(w['op_weight/normal/skip_connect'], p[:, 3].mean())
    with pytest.raises(ValueError, match='ops'):
        monitor.op_weights(arch, PRIMITIVES[:4])
    g = derive(arch['normal'], arch['reduce'])
    path = str(tmp_path / 'genotypes' / 'search_epoch002.json')
    monitor.save_genotype(path, g, alphas=arch, primitives=PRIMITIVES, epoch=2)
    d = json.load(open(path))
    assert Genotype.from_dict(d) == g and d['primitives'] == list(PRIMITIVES)
    assert np.allclose(d['alphas']['normal'], p) and d['epoch'] == 2
    with pytest.raises(ValueError, match='primitives'):
        monitor.save_genotype(path, g, alphas=arch)


def test_genotype_stats_counts_cells():
    g = Genotype(normal=(('skip_connect', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2)),
                 normal_concat=(2, 3), reduce_concat=(2, 3),
                 reduce=(('max_pool_3x3', 0), ('max_pool_3x3', 1), ('none', 0), ('skip_connect', 2)))
    assert monitor.genotype_stats(g) == {'skip_count': 3, 'param_free_count': 7, 'param_free_normal': 3,
                                         'param_free_reduce': 4}
