"""ASO-SE search on CIFAR-100 (`:smoke` for the CPU-sized variant)."""
from asose_jax.config import SMOKE_VARIANTS, base_config, smoke_overrides


def get_config(arg: str | None = None):
    config = base_config(dataset='cifar100')
    if arg in SMOKE_VARIANTS:
        smoke_overrides(config, growth=arg == 'smoke_growth')
    elif arg:
        raise ValueError(f'configs/cifar100.py: unknown variant {arg!r}; allowed: {SMOKE_VARIANTS}')
    return config
