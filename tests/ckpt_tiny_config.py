"""Tiny synthetic config for tests/test_checkpoint.py, loadable by `python -m asose_jax.train --config`:
C=4, 2 cells, 8x8 images, parameter-free ops, a depth growth after search epoch 0."""
from asose_jax.run.config import base_config


def get_config():
    c = base_config()
    c.data.update(source='synthetic', image_size=8, synthetic_train=64, synthetic_test=16, eval_batch_size=16)
    c.model.update(C=4, layers=2, steps=2, multiplier=2,
                   primitives=['none', 'max_pool_3x3', 'skip_connect', 'avg_pool_3x3'])
    c.search.update(batch_size=16, warmup_epochs=1, search_epochs=3)
    c.growth.update(trigger='schedule', schedule='0:depth')
    c.optimize.update(epochs=2, batch_size=32, C=4, layers=2, cutout=0)
    c.checkpoint.update(max_to_keep=2)
    c.progress = False
    return c
