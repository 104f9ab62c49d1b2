"""`data.source='download'`: the official CIFAR python tarballs, fetched once into a cache folder.

A fresh machine needs nothing but this package and internet (or the tarball put into the cache by
hand). The cache only ever holds complete things: a download goes to a temp file and is renamed
into place after its md5 matches; the archive is unpacked into a temp folder whose dataset folder
is renamed into place after its layout is checked. Every failure is a `DataError` whose one-line
message names the URL or file and how to proceed, and leaves no temp file behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib

from tqdm import tqdm

from asose_jax.data.layout import DataError, check_layout

CACHE_ENV = 'ASOSE_DATA_CACHE'
DEFAULT_CACHE = os.path.join('~', '.cache', 'asose_jax', 'data')
TIMEOUT_S = 20  # per socket operation: an unreachable server fails within seconds, not minutes
CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Archive:
    """One official tarball: where it lives, its md5, its file name in the cache (the official one
    whatever the URL, so the place to put it by hand never moves) and the folder it unpacks to."""

    url: str
    md5: str
    filename: str
    folder: str


# https://www.cs.toronto.edu/~kriz/cifar.html; the same md5s are in torchvision's datasets/cifar.py
ARCHIVES = {
    'cifar10': Archive('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
                       'c58f30108f718f92721af3b95e74349a', 'cifar-10-python.tar.gz', 'cifar-10-batches-py'),
    'cifar100': Archive('https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',
                        'eb9058c3a382ffc7106e4002c42a8d85', 'cifar-100-python.tar.gz', 'cifar-100-python'),
}


def cache_dir(configured: str = '') -> str:
    """The cache folder: `data.cache_dir`, else $ASOSE_DATA_CACHE, else ~/.cache/asose_jax/data."""
    return os.path.abspath(os.path.expanduser(configured or os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def archive_for(dataset: str, url: str = '', md5: str = '') -> Archive:
    """The official archive of `dataset`, with the URL and/or md5 replaced where given (a mirror, or a
    test's local file). A URL replaced without an md5 must serve the official file."""
    official = ARCHIVES[dataset]
    return dataclasses.replace(official, url=url or official.url, md5=(md5 or official.md5).lower())


def _how_to_proceed(archive: Archive, cache: str) -> str:
    """The two ways round a failed download, for the end of every error message."""
    return (f'put the official {archive.filename} (md5 {archive.md5}) at {os.path.join(cache, archive.filename)} '
            f'to use it without downloading, or unpack it yourself and pass --config.data.source=cifar_dir '
            f'--config.data.dir=<its {archive.folder} folder> (the official python layout)')


def _make_cache(cache: str) -> None:
    """Creates the cache folder; one it cannot write to is a DataError that says how to move it."""
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise DataError(f'cannot create the data cache {cache} ({e}); set ${CACHE_ENV} or '
                        '--config.data.cache_dir to a writable folder') from e
    if not os.access(cache, os.W_OK | os.X_OK):
        raise DataError(f'the data cache {cache} is not writable; set ${CACHE_ENV} or --config.data.cache_dir '
                        'to a writable folder')


def md5sum(path: str) -> str:
    """The hex md5 of a file, read in 1 MiB chunks (the CIFAR tarballs are ~170 MB)."""
    with open(path, 'rb') as f:
        digest = hashlib.md5()
        for chunk in iter(lambda: f.read(CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: str) -> None:
    """Copies `url` into the open-able path `dest` with a progress bar; raises what urllib raises."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, 'wb') as out:
        total = int(response.headers.get('Content-Length') or 0) or None
        with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=os.path.basename(url),
                  mininterval=1.0) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b''):
                out.write(chunk)
                bar.update(len(chunk))


def download(archive: Archive, cache: str) -> str:
    """Downloads the archive to a temp file in the cache, checks its md5 and renames it to
    `<cache>/<filename>`; on any failure the temp file is removed and a DataError raised."""
    target = os.path.join(cache, archive.filename)
    fd, part = tempfile.mkstemp(prefix=f'.{archive.filename}.', suffix='.part', dir=cache)
    os.close(fd)
    try:
        print(f'downloading {archive.url} to {target}', flush=True)
        try:
            _fetch(archive.url, part)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError; ValueError: bad URL
            reason = getattr(e, 'reason', None) or e
            raise DataError(f'cannot download {archive.url} ({reason}); {_how_to_proceed(archive, cache)}') from e
        got = md5sum(part)
        if got != archive.md5:
            raise DataError(f'{archive.url} downloaded with md5 {got}, expected {archive.md5} (a truncated or '
                            f'changed file; nothing was kept); {_how_to_proceed(archive, cache)}')
        os.replace(part, target)
    finally:
        if os.path.exists(part):
            os.remove(part)
    return target


def _extract_all(tar: tarfile.TarFile, dest: str) -> None:
    """Unpacks with the 'data' filter: no absolute paths, no links out of `dest`, no device files.
    Pythons before 3.10.12/3.11.4 lack the filter: there only plain files and folders inside `dest`
    are accepted (all the official archives hold)."""
    if hasattr(tarfile, 'data_filter'):
        tar.extractall(dest, filter='data')
        return
    members = tar.getmembers()
    for m in members:
        inside = os.path.realpath(os.path.join(dest, m.name)).startswith(os.path.realpath(dest) + os.sep)
        if not (m.isfile() or m.isdir()) or not inside:
            raise tarfile.TarError(f'member {m.name!r} is not a plain file or folder inside the archive')
    tar.extractall(dest, members)


def unpack(archive: Archive, tarball: str, cache: str, dataset: str) -> str:
    """Unpacks `tarball` into a temp folder in the cache, checks the dataset folder's layout and
    renames it to `<cache>/<folder>`; the temp folder is removed whatever happens."""
    final = os.path.join(cache, archive.folder)
    tmp = tempfile.mkdtemp(prefix=f'.{archive.folder}.', suffix='.part', dir=cache)
    try:
        try:
            with tarfile.open(tarball, 'r:gz') as tar:
                _extract_all(tar, tmp)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # truncated, corrupt, disk full
            raise DataError(f'cannot unpack {tarball} ({e}); delete it and rerun to download it again, '
                            f'or {_how_to_proceed(archive, cache)}') from e
        unpacked = os.path.join(tmp, archive.folder)
        if not os.path.isdir(unpacked):
            raise DataError(f'{tarball} holds {sorted(os.listdir(tmp))}, not the {archive.folder} folder of the '
                            f'official {dataset} archive; {_how_to_proceed(archive, cache)}')
        check_layout(unpacked, dataset, what=f'{tarball} (unpacked)')
        try:
            os.rename(unpacked, final)
        except OSError:
            if not os.path.isdir(final):  # not a concurrent run that unpacked it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_cifar(dataset: str, cache: str = '', url: str = '', md5: str = '') -> str:
    """The unpacked official `dataset` folder in the cache: as found; else unpacked from a tarball
    found in the cache (its md5 checked); else downloaded, checked and unpacked."""
    archive = archive_for(dataset, url, md5)
    cache = cache_dir(cache)
    final = os.path.join(cache, archive.folder)
    if os.path.isdir(final):  # only ever renamed into place complete
        return final
    _make_cache(cache)
    tarball = os.path.join(cache, archive.filename)
    if os.path.exists(tarball):
        got = md5sum(tarball)
        if got != archive.md5:
            raise DataError(f'{tarball} has md5 {got}, expected {archive.md5}: delete it and rerun to download '
                            f'{archive.url}, or replace it with the official file')
    else:
        download(archive, cache)
    return unpack(archive, tarball, cache, dataset)
