"""ASO-SE search on CIFAR-10. `--config configs/cifar10.py` (DARTS search protocol),
or `--config configs/cifar10.py:smoke` (CPU-sized, in the CPU recipe: under 5 minutes on a 2-core CPU).
Both run the four ASO-SE phases: warmup, search with plateau-triggered growth, optimize."""
from asose_jax.run.config import variant_config


def get_config(arg: str | None = None):
    return variant_config('cifar10', arg, 'configs/cifar10.py')
