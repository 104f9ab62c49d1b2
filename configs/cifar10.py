"""ASO-SE search on CIFAR-10. `--config configs/cifar10.py` (DARTS search protocol),
`--config configs/cifar10.py:smoke` (CPU-sized, in the CPU recipe: under 3 minutes on a 2-core Xeon)
or `:smoke_growth` (the same with one depth growth)."""
from asose_jax.run.config import variant_config


def get_config(arg: str | None = None):
    return variant_config('cifar10', arg, 'configs/cifar10.py')
