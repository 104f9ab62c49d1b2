"""ASO-SE search on CIFAR-100 (`:smoke` for the CPU-sized variant)."""
from asose_jax.run.config import variant_config


def get_config(arg: str | None = None):
    return variant_config('cifar100', arg, 'configs/cifar100.py')
