"""Train a genotype from scratch on CIFAR-10 with `python -m asose_jax.evaluate`.

`configs/eval_cifar10.py`: the DARTS evaluation protocol (C=36, 20 cells, batch 96, 600 epochs,
SGD 0.025 cosine to 0, momentum 0.9, wd 3e-4, clip 5, cutout 16, drop-path 0.2, auxiliary head
weight 0.4 at 2/3 depth). DARTS ramps drop-path linearly from 0 to 0.2 over training; here the
rate is constant (the FixedNetwork takes it as a static field).
`configs/eval_cifar10.py:smoke`: CPU-sized (the bundled real-image subset at 16x16, a small net, few epochs).
Only the `data`, `model.stem_multiplier` and `optimize` sections are read.
"""
from asose_jax.run.config import base_config


def get_config(arg: str | None = None):
    c = base_config(dataset='cifar10')
    c.optimize.update(dict(
        epochs=600, batch_size=96, C=36, layers=20,
        lr=0.025, lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
        cutout=16, drop_path=0.2, auxiliary=True, aux_weight=0.4,
        depthwise_impl='conv',
    ))
    if arg == 'smoke':
        c.data.source = 'cifar_dir'
        c.data.dir = '../shared/data/cifar10-subset'
        c.data.image_size = 16
        c.data.eval_batch_size = 512
        c.optimize.update(dict(epochs=4, batch_size=32, C=8, layers=3, lr=0.05, cutout=0, drop_path=0.1,
                               auxiliary=False, depthwise_impl='shift'))
    elif arg:
        raise ValueError(f'configs/eval_cifar10.py: unknown variant {arg!r}; allowed: smoke')
    return c
