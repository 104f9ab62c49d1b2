import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asose_jax.data import cifar as data


def test_cifar_dir_reads_subset(subset_dir):
    ds = data.load_cifar_dir(subset_dir)
    assert ds.train_images.shape == (4068, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (1017, 32, 32, 3)
    assert ds.num_classes == 10 and set(np.unique(ds.train_labels)) == set(range(10))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match='not a folder'):
        data.load_cifar_dir(str(tmp_path / 'nope'))
    with pytest.raises(data.DataError, match='lacks'):
        data.load_cifar_dir(str(tmp_path))


def _write_layout(path, train_data=None):
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    good = {b'data': rng.integers(0, 255, (10, 3072), dtype=np.uint8), b'labels': list(range(10))}
    for name, d in (('data_batch_1', train_data or good), ('test_batch', good), ('batches.meta', {b'label_names': []})):
        with open(os.path.join(path, name), 'wb') as f:
            pickle.dump(d, f)


def test_malformed_batches(tmp_path):
    _write_layout(tmp_path / 'ok')
    assert data.load_cifar_dir(str(tmp_path / 'ok')).train_images.shape == (10, 32, 32, 3)
    _write_layout(tmp_path / 'shape', {b'data': np.zeros((10, 100), np.uint8), b'labels': [0] * 10})
    with pytest.raises(data.DataError, match='3072'):
        data.load_cifar_dir(str(tmp_path / 'shape'))
    _write_layout(tmp_path / 'labels', {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 12]})
    with pytest.raises(data.DataError, match='labels outside'):
        data.load_cifar_dir(str(tmp_path / 'labels'))
    _write_layout(tmp_path / 'garbage')
    with open(tmp_path / 'garbage' / 'data_batch_1', 'wb') as f:
        f.write(b'not a pickle')
    with pytest.raises(data.DataError, match='cannot read'):
        data.load_cifar_dir(str(tmp_path / 'garbage'))


def test_split_is_seeded_and_disjoint():
    a1, b1 = data.split_indices(100, 0.5, seed=3)
    a2, b2 = data.split_indices(100, 0.5, seed=3)
    a3, _ = data.split_indices(100, 0.5, seed=4)
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)
    assert len(a1) == 50 and len(set(a1) | set(b1)) == 100
    with pytest.raises(data.DataError, match='empty'):
        data.split_indices(1, 0.5, 0)
    with pytest.raises(data.DataError, match='train_portion'):
        data.split_indices(10, 0.0, 0)


def test_batches_shapes_and_eval_mask():
    split = data.DeviceSplit.from_numpy(np.zeros((10, 8, 8, 3), np.uint8), np.arange(10, dtype=np.int32))
    batches = list(split.epoch_batches(jax.random.key(0), 4))
    assert len(batches) == 2 and batches[0]['image'].shape == (4, 8, 8, 3)
    seen = np.concatenate([b['label'] for b in batches])
    assert len(set(seen.tolist())) == 8
    ev = list(split.eval_batches(4))
    assert [int(b['mask'].sum()) for b in ev] == [4, 4, 2]
    with pytest.raises(data.DataError, match='no batch'):
        list(split.epoch_batches(jax.random.key(0), 11))


def test_augment():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3)), jnp.uint8)
    a = data.augment(jax.random.key(0), images)
    b = data.augment(jax.random.key(0), images)
    c = data.augment(jax.random.key(1), images)
    assert a.shape == (6, 8, 8, 3) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # no padding and no flip: the crop at offset 4 is the normalised image
    plain = data.augment(jax.random.key(0), images, pad=0)
    normed = data.normalize(images)
    for i in range(6):
        assert (np.allclose(plain[i], normed[i]) or np.allclose(plain[i], normed[i, :, ::-1]))
    cut = data.augment(jax.random.key(0), images, cutout=4, pad=0)
    assert int((np.asarray(cut) == 0).all(-1).sum()) >= 6 * 4  # each image lost at least a 2x2 corner


def test_synthetic_is_learnable_shape():
    ds = data.synthetic(64, 16, 10, seed=0, image_size=16)
    assert ds.train_images.shape == (64, 16, 16, 3) and ds.test_labels.shape == (16,)


def test_tfds_source_offline():
    tfds = pytest.importorskip('tensorflow_datasets')
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load_tfds('cifar10')
    assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.shape == (12,) and ds.num_classes == 10


def test_downsample_average_pools():
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, :2, :2] = 200
    out = data.downsample(img, 2)
    assert out.shape == (1, 2, 2, 3) and out[0, 0, 0, 0] == 200 and out[0, 1, 1, 0] == 0
    with pytest.raises(data.DataError, match='divide'):
        data.downsample(np.zeros((1, 32, 32, 3), np.uint8), 12)
