"""CIFAR data: the official tarballs (downloaded and checksummed), python-layout folders, tfds,
synthetic images; the weight/arch split and the on-device augmentation."""
