"""Data: datasets by name (TFDS sources, array_record, no TensorFlow), augmentation, pipeline.

Importing the package registers the built-in datasets (CIFAR-10/100 from TFDS, the offline
``digits``, ``fashion_mnist``, ``mit67`` and ``tiny_imagenet`` builders; Stanford Dogs and CUB from TFDS).
"""

from mmkd_jax.data import sources
from mmkd_jax.data import digits, fashion_mnist, folders  # noqa: F401  (register their builders)
from mmkd_jax.data.sources import DatasetSpec, dataset_spec, open_dataset, register_dataset

__all__ = ["DatasetSpec", "dataset_spec", "open_dataset", "register_dataset", "sources"]
