"""NAS-Bench-201 search on CIFAR-10. `--config configs/nb201.py` (the benchmark's GDAS protocol, values
and sources in asose_jax.run.config.nb201_config) or `configs/nb201.py:smoke` (CPU-sized, bundled subset).
The derived cell's 200-epoch ground truth goes into summary.json (asose_jax.benchmarks.nats_bench)."""
from asose_jax.run.config import nb201_config


def get_config(arg: str | None = None):
    return nb201_config(arg)
