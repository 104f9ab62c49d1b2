"""ASO-SE search on CIFAR-10. `--config configs/cifar10.py` (DARTS search protocol) or
`--config configs/cifar10.py:smoke` (CPU-sized: minutes on 2 cores)."""
from asose_jax.config import base_config, smoke_overrides


def get_config(arg: str | None = None):
    config = base_config(dataset='cifar10')
    if arg == 'smoke':
        smoke_overrides(config)
    elif arg:
        raise ValueError(f'configs/cifar10.py: unknown variant {arg!r}; allowed: smoke')
    return config
