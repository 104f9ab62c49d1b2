"""NAS-Bench-201 / NATS-Bench TSS ground truth: the 200-epoch test accuracy of an architecture string.

Reads the table of all 15,625 cells from a CSV (`arch,cifar10_test,cifar100_test,imagenet16_120_test`):
`$ASOSE_NATS_TSS` (a folder holding `nats_tss_200ep.csv`, or the file), by default the project's
`../shared/data/nats-bench-tss`. Where the `nats_bench` package is installed and `$NATS_BENCH_TSS`
names a user's official benchmark file, the official API answers instead. The table is data: it is
read where it lies, never copied.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os

import numpy as np

from asose_jax.space.nb201_genotype import NB201Genotype

ENV_TABLE, ENV_OFFICIAL = 'ASOSE_NATS_TSS', 'NATS_BENCH_TSS'
DEFAULT_DIR = os.path.join('..', 'shared', 'data', 'nats-bench-tss')
CSV_NAME = 'nats_tss_200ep.csv'
DATASETS = {'cifar10': 'cifar10_test', 'cifar100': 'cifar100_test', 'imagenet16_120': 'imagenet16_120_test'}
OFFICIAL_NAMES = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'imagenet16_120': 'ImageNet16-120'}
NUM_ARCHS = 15625


class TableMissing(FileNotFoundError):
    """No ground-truth table where it was looked for."""


def table_path() -> str:
    path = os.environ.get(ENV_TABLE, DEFAULT_DIR)
    return os.path.join(path, CSV_NAME) if os.path.isdir(path) else path


@dataclasses.dataclass(frozen=True)
class Table:
    """Test accuracy (percent) per dataset, one row per architecture string."""

    archs: tuple[str, ...]
    accuracy: dict  # dataset -> np.ndarray [num archs]
    source: str

    @functools.cached_property
    def index(self) -> dict:
        return {a: i for i, a in enumerate(self.archs)}

    def lookup(self, arch: str) -> dict:
        """{dataset: accuracy} and {dataset}_percentile (share of all cells scoring lower, in percent)."""
        i = self.index.get(arch)
        if i is None:
            raise KeyError(f'{arch!r} is not an architecture of the NAS-Bench-201 table {self.source}')
        out = {}
        for name, acc in self.accuracy.items():
            out[f'{name}_test'] = float(acc[i])
            out[f'{name}_percentile'] = float(100.0 * np.mean(acc < acc[i]))
        return out


def read_csv(path: str) -> Table:
    if not os.path.isfile(path):
        raise TableMissing(f'no NAS-Bench-201 table at {path} (set ${ENV_TABLE} to its folder or file)')
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    missing = ({'arch'} | set(DATASETS.values())) - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f'{path}: lacks the columns {sorted(missing)}')
    if len(rows) != NUM_ARCHS:
        raise ValueError(f'{path}: {len(rows)} rows, expected {NUM_ARCHS} (one per NAS-Bench-201 cell)')
    return Table(tuple(r['arch'] for r in rows),
                 {name: np.array([float(r[col]) for r in rows]) for name, col in DATASETS.items()}, path)


def read_official(path: str) -> Table:
    """The official benchmark file through the `nats_bench` package (200-epoch, mean over seeds)."""
    from nats_bench import create  # noqa: PLC0415 (optional dependency)
    api = create(path, 'tss', fast_mode=True, verbose=False)
    archs = tuple(api.arch(i) for i in range(len(api)))
    acc = {name: np.array([api.get_more_info(i, official, hp='200', is_random=False)['test-accuracy']
                           for i in range(len(api))]) for name, official in OFFICIAL_NAMES.items()}
    return Table(archs, acc, path)


@functools.cache
def load() -> Table:
    """The official API where `nats_bench` and $NATS_BENCH_TSS are there, else the CSV table."""
    official = os.environ.get(ENV_OFFICIAL)
    if official:
        try:
            import nats_bench  # noqa: F401,PLC0415
        except ImportError:
            official = None
    return read_official(official) if official else read_csv(table_path())


def ground_truth(arch: str) -> dict | None:
    """Accuracies and percentiles of `arch`, or None (one printed line) when no table is found."""
    try:
        table = load()
    except TableMissing as e:
        print(f'NAS-Bench-201 ground truth unavailable: {e}', flush=True)
        return None
    return table.lookup(arch)


def summary_fields(genotype) -> dict:
    """What a run's summary.json adds for a NAS-Bench-201 cell: `nb201_arch` and, where the table is
    found, its 200-epoch test accuracies and percentiles among all 15,625 cells. {} for DARTS genotypes."""
    if not isinstance(genotype, NB201Genotype):
        return {}
    truth = ground_truth(str(genotype)) or {}
    if truth:
        print(f"NAS-Bench-201 ground truth of {genotype}: CIFAR-10 {truth['cifar10_test']:.2f} "
              f"({truth['cifar10_percentile']:.1f}th percentile), CIFAR-100 {truth['cifar100_test']:.2f}, "
              f"ImageNet16-120 {truth['imagenet16_120_test']:.2f}", flush=True)
    return {'nb201_arch': str(genotype), **truth}
