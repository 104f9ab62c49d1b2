"""CIFAR data: sources (the official tarball downloaded into a cache, an official python-layout folder,
tfds, synthetic), the weight/arch split,
device-resident uint8 arrays and jit-side augmentation.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from asose_jax.data import download
from asose_jax.data.layout import DataError, batch_arrays, check_layout, unpickle

SOURCES = ('download', 'cifar_dir', 'tfds', 'synthetic')
DATASETS = {'cifar10': 10, 'cifar100': 100}
CIFAR_MEAN = np.array([0.49139968, 0.48215827, 0.44653124], np.float32)
CIFAR_STD = np.array([0.24703233, 0.24348505, 0.26158768], np.float32)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Host numpy arrays: images uint8 [N, 32, 32, 3] (NHWC), labels int32 [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int


def load_cifar_dir(path: str, dataset: str = 'cifar10') -> Dataset:
    """Reads the official CIFAR python layout (`check_layout`)."""
    train_files, test_files, meta, label_key = check_layout(path, dataset)
    unpickle(os.path.join(path, meta))
    train = [batch_arrays(os.path.join(path, n), label_key) for n in train_files]
    test = [batch_arrays(os.path.join(path, n), label_key) for n in test_files]
    num_classes = DATASETS[dataset]
    ds = Dataset(np.concatenate([a for a, _ in train]), np.concatenate([b for _, b in train]),
                 np.concatenate([a for a, _ in test]), np.concatenate([b for _, b in test]), num_classes)
    for split, labels in (('train', ds.train_labels), ('test', ds.test_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f'{path}: {split} labels outside [0, {num_classes}) for {dataset}')
    return ds


def load_tfds(dataset: str, data_dir: str | None = None) -> Dataset:
    """Reads prepared tfds CIFAR through `tfds.data_source` (no TensorFlow needed to read)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError('data.source=tfds needs tensorflow-datasets: pip install "asose_jax[tfds]"') from e

    def read(split):
        src = tfds.data_source(dataset, split=split, data_dir=data_dir)
        examples = [src[i] for i in range(len(src))]
        if not examples:
            raise DataError(f'tfds {dataset} split {split!r} is empty')
        return (np.stack([np.asarray(e['image'], np.uint8) for e in examples]),
                np.asarray([e['label'] for e in examples], np.int32))

    (tr_x, tr_y), (te_x, te_y) = read('train'), read('test')
    return Dataset(tr_x, tr_y, te_x, te_y, DATASETS[dataset])


def synthetic(num_train: int, num_test: int, num_classes: int, seed: int = 0, image_size: int = 32) -> Dataset:
    """Learnable random images: each class has its own mean colour pattern plus noise."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(40, 215, (num_classes, 4, 4, 3))

    def make(n):
        y = rng.integers(0, num_classes, n).astype(np.int32)
        base = np.repeat(np.repeat(protos[y], image_size // 4, axis=1), image_size // 4, axis=2)
        x = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        return x, y

    (a, b), (c, d) = make(num_train), make(num_test)
    return Dataset(a, b, c, d, num_classes)


def load(cfg) -> Dataset:
    """Loads the dataset named by the config's data section (validated beforehand)."""
    if cfg.source == 'download':
        ds = load_cifar_dir(download.ensure_cifar(cfg.dataset, cfg.cache_dir, cfg.url, cfg.md5), cfg.dataset)
    elif cfg.source == 'cifar_dir':
        ds = load_cifar_dir(cfg.dir, cfg.dataset)
    elif cfg.source == 'tfds':
        ds = load_tfds(cfg.dataset, cfg.dir or None)
    elif cfg.source == 'synthetic':
        ds = synthetic(cfg.synthetic_train, cfg.synthetic_test, DATASETS[cfg.dataset], cfg.split_seed,
                       cfg.image_size)
    else:
        raise DataError(f'data.source {cfg.source!r}; allowed: {SOURCES}')
    if cfg.source != 'synthetic' and cfg.image_size != ds.train_images.shape[1]:
        ds = dataclasses.replace(ds, train_images=downsample(ds.train_images, cfg.image_size),
                                 test_images=downsample(ds.test_images, cfg.image_size))
    if cfg.max_train:
        ds = dataclasses.replace(ds, train_images=ds.train_images[:cfg.max_train],
                                 train_labels=ds.train_labels[:cfg.max_train])
    if cfg.max_test:
        ds = dataclasses.replace(ds, test_images=ds.test_images[:cfg.max_test],
                                 test_labels=ds.test_labels[:cfg.max_test])
    return ds


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Average-pools square uint8 images to `size` (a divisor of their size): CPU-sized runs."""
    n, h, w, c = images.shape
    if h % size or w != h:
        raise DataError(f'data.image_size={size} must divide the image size {h}')
    f = h // size
    return images.reshape(n, size, f, size, f, c).mean(axis=(2, 4)).round().astype(np.uint8)


def split_indices(n: int, portion: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of range(n) cut into the weight part and the arch part."""
    if not 0.0 < portion < 1.0:
        raise DataError(f'data.train_portion must be in (0, 1), got {portion}')
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * portion))
    if cut == 0 or cut == n:
        raise DataError(f'splitting {n} training images with portion {portion} leaves an empty half')
    return np.sort(perm[:cut]), np.sort(perm[cut:])


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """One split resident on the device (uint8 images, int32 labels)."""

    images: jax.Array
    labels: jax.Array

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray) -> 'DeviceSplit':
        return cls(jax.device_put(images), jax.device_put(labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def num_batches(self, batch_size: int) -> int:
        return len(self) // batch_size

    def epoch_batches(self, key, batch_size: int, start: int = 0):
        """Shuffled full batches (the remainder is dropped so shapes stay static), from batch `start` of
        the pass on (a resumed position gathers no batch it skips)."""
        n = self.num_batches(batch_size)
        if n == 0:
            raise DataError(f'a split of {len(self)} images gives no batch of {batch_size}')
        order = jax.random.permutation(key, len(self))[: n * batch_size].reshape(n, batch_size)
        for idx in order[start:]:
            yield {'image': self.images[idx], 'label': self.labels[idx]}

    def eval_batches(self, batch_size: int):
        """Every example once, in order; the last batch padded and masked."""
        n = len(self)
        for start in range(0, n, batch_size):
            idx = np.arange(start, start + batch_size)
            mask = idx < n
            idx = np.where(mask, idx, 0)
            yield {'image': self.images[idx], 'label': self.labels[idx], 'mask': jnp.asarray(mask)}


def normalize(images_uint8):
    x = images_uint8.astype(jnp.float32) / 255.0
    return (x - CIFAR_MEAN) / CIFAR_STD


def augment(key, images_uint8, cutout: int = 0, pad: int = 4):
    """Pad-4 random crop and horizontal flip, normalise, then cutout (DARTS order); inside jit."""
    n, h, w, _ = images_uint8.shape
    k_crop, k_flip, k_cut = jax.random.split(key, 3)
    padded = jnp.pad(images_uint8, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
    x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1])))(padded, offsets)
    x = normalize(x)
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
    if cutout > 0:
        centre = jax.random.randint(k_cut, (n, 2), 0, jnp.array([h, w]))
        ys, xs = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
        cy, cx = centre[:, 0, None, None], centre[:, 1, None, None]
        inside = ((ys >= cy - cutout // 2) & (ys < cy + cutout - cutout // 2)
                  & (xs >= cx - cutout // 2) & (xs < cx + cutout - cutout // 2))
        x = x * (~inside)[..., None]
    return x
