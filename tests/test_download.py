"""data.source='download': tiny fake CIFAR tarballs in the official layout, served from file:// URLs
and a local http.server on 127.0.0.1 (no internet), and the one-line errors of the CLI."""
import hashlib
import http.server
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest

from asose_jax.data import download
from asose_jax.data import cifar as data
from asose_jax.run.config import ConfigError, base_config, validate

ROOT = os.path.join(os.path.dirname(__file__), '..')
N = 6  # images per batch


def _batch(rng, label_key, num_classes):
    return {b'batch_label': b'fake', label_key: [int(v) for v in rng.integers(0, num_classes, N)],
            b'data': rng.integers(0, 256, (N, 3072), dtype=np.uint8), b'filenames': [b'x.png'] * N}


def _layout(dataset):
    """{file name: pickled bytes} of the official python layout, a few images each."""
    rng = np.random.default_rng(0)
    if dataset == 'cifar10':
        files = {f'data_batch_{i}': _batch(rng, b'labels', 10) for i in (1, 2)}
        files.update(test_batch=_batch(rng, b'labels', 10), **{'batches.meta': {b'label_names': [b'a'] * 10}})
    else:
        files = {name: {**_batch(rng, b'fine_labels', 100), b'coarse_labels': [0] * N} for name in ('train', 'test')}
        files['meta'] = {b'fine_label_names': [b'a'] * 100, b'coarse_label_names': [b'b'] * 20}
    return {name: pickle.dumps(d) for name, d in files.items()}


def _tarball(path, folder, files):
    """Writes a .tar.gz holding `folder/<name>` for each of `files`; returns its md5."""
    with tarfile.open(path, 'w:gz') as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f'{folder}/{name}')
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return download.md5sum(str(path))


@pytest.fixture
def served(tmp_path):
    """A folder of fake official tarballs: (folder, {dataset: md5})."""
    root = tmp_path / 'served'
    root.mkdir()
    md5 = {ds: _tarball(root / download.ARCHIVES[ds].filename, download.ARCHIVES[ds].folder, _layout(ds))
           for ds in download.ARCHIVES}
    return root, md5


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server over tmp_path/served on 127.0.0.1 (stopped after the test): its base URL.
    `/short/<name>` announces the whole file's length but sends half of it and closes."""
    root = tmp_path / 'served'
    root.mkdir(exist_ok=True)

    class Handler(_Quiet):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def do_GET(self):
            if not self.path.startswith('/short/'):
                return super().do_GET()
            blob = (root / self.path[len('/short/'):]).read_bytes()
            self.send_response(200)
            self.send_header('Content-Length', str(len(blob)))
            self.end_headers()
            self.wfile.write(blob[:len(blob) // 2])
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port_url():
    """An http URL on 127.0.0.1 where nothing listens (the port was just free)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}/cifar-10-python.tar.gz'


def _file_url(path):
    return 'file://' + os.path.abspath(path)


def _cfg(dataset, cache, url, md5='', **kw):
    c = base_config(dataset)
    c.data.update(cache_dir=str(cache), url=url, md5=md5, **kw)
    validate(c)
    return c.data


def _leftovers(cache):
    return sorted(n for n in os.listdir(cache) if n.startswith('.') or n.endswith('.part'))


def test_file_url_download_unpacks_and_loads(served, tmp_path, capsys):
    root, md5 = served
    cache = tmp_path / 'cache'
    url = _file_url(root / 'cifar-10-python.tar.gz')
    ds = data.load(_cfg('cifar10', cache, url, md5['cifar10']))
    assert ds.train_images.shape == (2 * N, 32, 32, 3) and ds.test_images.shape == (N, 32, 32, 3)
    assert ds.num_classes == 10 and ds.train_images.dtype == np.uint8
    assert sorted(os.listdir(cache)) == ['cifar-10-batches-py', 'cifar-10-python.tar.gz']
    assert download.md5sum(str(cache / 'cifar-10-python.tar.gz')) == md5['cifar10']
    assert 'downloading' in capsys.readouterr().out
    # the unpacked folder is used as it is: no download (the URL is gone now)
    os.remove(root / 'cifar-10-python.tar.gz')
    again = data.load(_cfg('cifar10', cache, url, md5['cifar10']))
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    assert 'downloading' not in capsys.readouterr().out


def test_http_download_cifar100(served, http_root, tmp_path):
    _, md5 = served
    cache = tmp_path / 'cache'
    ds = data.load(_cfg('cifar100', cache, f'{http_root}/cifar-100-python.tar.gz', md5['cifar100']))
    assert ds.num_classes == 100 and ds.train_images.shape == (N, 32, 32, 3)
    expected = pickle.loads(_layout('cifar100')['train'])[b'fine_labels']
    np.testing.assert_array_equal(ds.train_labels, expected)  # the fine labels, not the coarse ones
    assert sorted(os.listdir(cache)) == ['cifar-100-python', 'cifar-100-python.tar.gz']


def test_bad_checksum_keeps_nothing(served, tmp_path):
    root, _ = served
    cache = tmp_path / 'cache'
    url = _file_url(root / 'cifar-10-python.tar.gz')
    with pytest.raises(data.DataError, match=r'md5 [0-9a-f]{32}, expected 0{32}.*data\.dir') as e:
        download.ensure_cifar('cifar10', str(cache), url, '0' * 32)
    assert url in str(e.value)
    assert os.listdir(cache) == []


def test_download_cut_short_is_a_checksum_error(served, http_root, tmp_path):
    _, md5 = served
    cache = tmp_path / 'cache'
    with pytest.raises(data.DataError, match='truncated'):
        download.ensure_cifar('cifar10', str(cache), f'{http_root}/short/cifar-10-python.tar.gz', md5['cifar10'])
    assert os.listdir(cache) == []


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
def test_corrupt_archive_with_matching_md5(served, tmp_path, damage):
    """An archive whose md5 matches (a wrong md5 given) but that does not unpack: a clear error and
    no unpacked or temp folder left."""
    root, _ = served
    blob = (root / 'cifar-10-python.tar.gz').read_bytes()
    bad = tmp_path / 'bad.tar.gz'
    bad.write_bytes(blob[:len(blob) // 2] if damage == 'truncated' else os.urandom(len(blob)))
    cache = tmp_path / 'cache'
    with pytest.raises(data.DataError, match='cannot unpack .*delete it'):
        download.ensure_cifar('cifar10', str(cache), _file_url(bad), hashlib.md5(bad.read_bytes()).hexdigest())
    assert os.listdir(cache) == ['cifar-10-python.tar.gz'] and _leftovers(cache) == []  # as given: told to delete


def test_unreachable_url_fails_within_seconds(tmp_path):
    cache = tmp_path / 'cache'
    url = _closed_port_url()
    t0 = time.monotonic()
    with pytest.raises(data.DataError, match='cannot download') as e:
        download.ensure_cifar('cifar10', str(cache), url)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert url in msg and '--config.data.dir=' in msg and str(cache / 'cifar-10-python.tar.gz') in msg
    assert '\n' not in msg and os.listdir(cache) == []


def test_missing_file_url(tmp_path):
    with pytest.raises(data.DataError, match='cannot download file://'):
        download.ensure_cifar('cifar10', str(tmp_path / 'cache'), _file_url(tmp_path / 'nope.tar.gz'))
    assert os.listdir(tmp_path / 'cache') == []


def test_wrong_layout_archives(tmp_path):
    files = _layout('cifar10')
    del files['test_batch']
    lacking = tmp_path / 'lacking.tar.gz'
    md5 = _tarball(lacking, 'cifar-10-batches-py', files)
    cache = tmp_path / 'cache'
    with pytest.raises(data.DataError, match=r"lacks \['test_batch'\]"):
        download.ensure_cifar('cifar10', str(cache), _file_url(lacking), md5)
    assert 'cifar-10-batches-py' not in os.listdir(cache) and _leftovers(cache) == []
    # a CIFAR-10 archive asked for as CIFAR-100: not its folder
    wrong = tmp_path / 'wrong.tar.gz'
    md5 = _tarball(wrong, 'cifar-10-batches-py', _layout('cifar10'))
    with pytest.raises(data.DataError, match='not the cifar-100-python folder'):
        download.ensure_cifar('cifar100', str(cache), _file_url(wrong), md5)
    assert 'cifar-100-python' not in os.listdir(cache) and _leftovers(cache) == []


def test_wrong_layout_folder_names_data_dir(tmp_path):
    folder = tmp_path / 'c100'
    folder.mkdir()
    for name, blob in _layout('cifar100').items():
        if name != 'train':
            (folder / name).write_bytes(blob)
    with pytest.raises(data.DataError, match=r"data.dir .*lacks \['train'\].*cifar-100-python folder"):
        data.load_cifar_dir(str(folder), 'cifar100')
    with pytest.raises(data.DataError, match=r"lacks \['batches.meta', 'test_batch', 'data_batch_\*'\]"):
        data.load_cifar_dir(str(folder), 'cifar10')


def test_tarball_in_cache_is_used_without_download(served, tmp_path, capsys):
    root, md5 = served
    cache = tmp_path / 'cache'
    cache.mkdir()
    (cache / 'cifar-10-python.tar.gz').write_bytes((root / 'cifar-10-python.tar.gz').read_bytes())
    folder = download.ensure_cifar('cifar10', str(cache), _closed_port_url(), md5['cifar10'])
    assert folder == str(cache / 'cifar-10-batches-py') and data.load_cifar_dir(folder).num_classes == 10
    assert 'downloading' not in capsys.readouterr().out


def test_tarball_in_cache_with_wrong_md5(served, tmp_path):
    root, _ = served
    cache = tmp_path / 'cache'
    cache.mkdir()
    (cache / 'cifar-10-python.tar.gz').write_bytes((root / 'cifar-10-python.tar.gz').read_bytes())
    with pytest.raises(data.DataError, match=r'cifar-10-python.tar.gz has md5 .*expected c58f3010'):
        download.ensure_cifar('cifar10', str(cache), _closed_port_url())  # the official md5
    assert os.listdir(cache) == ['cifar-10-python.tar.gz']


def test_unwritable_cache(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(data.DataError, match='cannot create the data cache .*ASOSE_DATA_CACHE'):
        download.ensure_cifar('cifar10', str(blocker / 'cache'), _closed_port_url())


def test_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / 'env'))
    assert download.cache_dir() == str(tmp_path / 'env')
    assert download.cache_dir(str(tmp_path / 'cfg')) == str(tmp_path / 'cfg')
    monkeypatch.delenv(download.CACHE_ENV)
    assert download.cache_dir() == os.path.expanduser('~/.cache/asose_jax/data')


def test_official_archives():
    assert download.archive_for('cifar10') == download.Archive(
        'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz', 'c58f30108f718f92721af3b95e74349a',
        'cifar-10-python.tar.gz', 'cifar-10-batches-py')
    a = download.archive_for('cifar100', url='file:///m/c100.tgz')
    assert (a.md5, a.folder, a.filename) == ('eb9058c3a382ffc7106e4002c42a8d85', 'cifar-100-python',
                                             'cifar-100-python.tar.gz')


def test_download_is_the_default_and_validated():
    c = base_config('cifar10')
    assert c.data.source == 'download'
    validate(c)
    c.data.dir = '/some/folder'
    with pytest.raises(ConfigError, match='data.source=cifar_dir'):
        validate(c)
    c.data.dir, c.data.md5 = '', 'abc'
    with pytest.raises(ConfigError, match='data.md5'):
        validate(c)


@pytest.mark.parametrize('module, args', [
    ('asose_jax.train', ['--config', 'configs/cifar10.py']),
    ('asose_jax.evaluate', ['--config', 'configs/eval_cifar10.py', '--genotype', 'DARTS_V2']),
    ('asose_jax.sweep', ['--config', 'configs/cifar10.py']),
])
def test_cli_offline_is_one_error_line(tmp_path, module, args):
    url = _closed_port_url()
    env = {**os.environ, download.CACHE_ENV: str(tmp_path / 'cache')}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, '-m', module, *args, '--workdir', str(tmp_path / 'run'),
                           f'--config.data.url={url}'], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert 'Traceback' not in out
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and url in errors[0] and '--config.data.dir=' in errors[0], out
    assert elapsed < 60, elapsed
    assert os.listdir(tmp_path / 'cache') == [] and not os.path.exists(tmp_path / 'run')
