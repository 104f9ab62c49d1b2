"""What every phase of a run reads: the config, the workdir, the device-resident splits, the key
streams, the metrics writer and the checkpoints."""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import ml_collections

from asose_jax.data import cifar as data_lib
from asose_jax.data.cifar import DeviceSplit
from asose_jax.report import monitor

STREAMS = ('data_weights', 'data_arch', 'data_optimize', 'weight', 'arch', 'optimize', 'init', 'optimize_init')


def key_streams(seed: int) -> dict:
    """One root key split once into named streams; steps fold in their step counter."""
    keys = jax.random.split(jax.random.key(seed), len(STREAMS))
    return dict(zip(STREAMS, keys))


@dataclasses.dataclass
class RunContext:
    config: ml_collections.ConfigDict
    workdir: str
    weights_split: DeviceSplit   # trains the weights during warmup/search
    arch_split: DeviceSplit      # trains the arch logits
    train_split: DeviceSplit     # both halves, for the optimize phase
    eval_split: DeviceSplit
    keys: dict
    writer: monitor.MetricsWriter
    ckpt: Any = None  # checkpoint.RunCheckpoints, or None (no checkpoints: the evaluation CLI, tests)

    @property
    def progress(self) -> bool:
        return bool(self.config.progress) and sys.stderr.isatty()


def load_splits(c: ml_collections.ConfigDict) -> dict:
    """The config's data on the device: the weight and arch halves of the training set, all of it
    (the optimize phase's), and the evaluation split; a DataError when a split cannot serve a batch."""
    ds = data_lib.load(c.data)
    if len(ds.test_labels) == 0:
        raise data_lib.DataError('the evaluation split is empty')
    w_idx, a_idx = data_lib.split_indices(len(ds.train_labels), c.data.train_portion, c.data.split_seed)
    for name, idx in (('weight', w_idx), ('arch', a_idx)):
        if len(idx) < c.search.batch_size:
            raise data_lib.DataError(f'the {name} half has {len(idx)} images, fewer than '
                                     f'search.batch_size={c.search.batch_size}')
    return {
        'weights': DeviceSplit.from_numpy(ds.train_images[w_idx], ds.train_labels[w_idx]),
        'arch': DeviceSplit.from_numpy(ds.train_images[a_idx], ds.train_labels[a_idx]),
        'train': DeviceSplit.from_numpy(ds.train_images, ds.train_labels),
        'eval': DeviceSplit.from_numpy(ds.test_images, ds.test_labels),
    }
