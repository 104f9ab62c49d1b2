"""Tiny synthetic NAS-Bench-201 search for tests (C=4, one cell per stage, 8x8 images), loadable by
`python -m asose_jax.train --config` and bench/search_quality.py."""
from asose_jax.run.config import nb201_config


def get_config(arg=None):
    del arg
    c = nb201_config('smoke')
    c.data.update(source='synthetic', image_size=8, synthetic_train=64, synthetic_test=16, eval_batch_size=16, dir='')
    c.model.update(C=4, cells_per_stage=1, pointwise_impl='conv')
    c.search.update(batch_size=16, warmup_epochs=1, search_epochs=2)
    c.optimize.update(epochs=1, batch_size=32)
    c.progress = False
    return c
