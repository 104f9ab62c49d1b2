"""ASO-SE search on CIFAR-10. `--config configs/cifar10.py` (DARTS search protocol),
`--config configs/cifar10.py:smoke` (CPU-sized: under 15 minutes on 2 cores) or `:smoke_growth`
(the same with one depth growth)."""
from asose_jax.config import SMOKE_VARIANTS, base_config, smoke_overrides


def get_config(arg: str | None = None):
    config = base_config(dataset='cifar10')
    if arg in SMOKE_VARIANTS:
        smoke_overrides(config, growth=arg == 'smoke_growth')
    elif arg:
        raise ValueError(f'configs/cifar10.py: unknown variant {arg!r}; allowed: {SMOKE_VARIANTS}')
    return config
