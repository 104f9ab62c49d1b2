"""The official CIFAR python layout (cifar-10-batches-py, cifar-100-python): checking a folder and
reading its pickled batches. Shared by the folder source and the downloader, which checks what it unpacked."""
from __future__ import annotations

import os
import pickle

import numpy as np


class DataError(ValueError):
    """A data folder or source that cannot be used, with the reason."""


def unpickle(path: str) -> dict:
    try:
        with open(path, 'rb') as f:
            d = pickle.load(f, encoding='bytes')
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f'cannot read CIFAR batch {path}: {e}') from e
    if not isinstance(d, dict):
        raise DataError(f'{path} does not hold a CIFAR batch dict')
    return d


def batch_arrays(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = unpickle(path)
    if b'data' not in d or label_key not in d:
        raise DataError(f'{path} lacks {b"data"!r} or {label_key!r} (keys: {sorted(d)})')
    data = np.asarray(d[b'data'], np.uint8)
    labels = np.asarray(d[label_key], np.int32)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f'{path}: data has shape {data.shape} and {len(labels)} labels; '
                        'expected [N, 3072] uint8 with N labels')
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def check_layout(path: str, dataset: str, what: str = 'data.dir') -> tuple[list[str], list[str], str, bytes]:
    """The (train files, test files, meta file, label key) of an official CIFAR python-layout folder
    (cifar-10: data_batch_*, test_batch, batches.meta; cifar-100: train, test, meta with fine labels);
    a DataError naming `what` and the missing files otherwise."""
    if not os.path.isdir(path):
        raise DataError(f'{what} {path!r} is not a folder (expected the CIFAR python layout)')
    names = sorted(os.listdir(path))
    if dataset == 'cifar10':
        train_files = [n for n in names if n.startswith('data_batch_')]
        test_files, meta, label_key = ['test_batch'], 'batches.meta', b'labels'
        missing = [n for n in (meta, *test_files) if n not in names] + ([] if train_files else ['data_batch_*'])
    else:
        train_files, test_files, meta, label_key = ['train'], ['test'], 'meta', b'fine_labels'
        missing = [n for n in (meta, *train_files, *test_files) if n not in names]
    if missing:
        folder = 'cifar-10-batches-py' if dataset == 'cifar10' else 'cifar-100-python'
        raise DataError(f'{what} {path!r} lacks {missing} of the official {dataset} python layout (it holds '
                        f'{names[:8]}); point --config.data.dir at the {folder} folder of the official tarball')
    return train_files, test_files, meta, label_key
