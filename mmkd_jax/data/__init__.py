"""Data: datasets by name (TFDS sources, array_record, no TensorFlow), augmentation, pipeline.

Importing the package registers the built-in datasets (CIFAR-10/100 from TFDS, the offline
``digits`` and ``fashion_mnist`` builders).
"""

from mmkd_jax.data import sources
from mmkd_jax.data import digits, fashion_mnist  # noqa: F401  (register their builders)
from mmkd_jax.data.sources import DatasetSpec, dataset_spec, open_dataset, register_dataset

__all__ = ["DatasetSpec", "dataset_spec", "open_dataset", "register_dataset", "sources"]
