"""Measures the teacher cache: bytes per example on disk and precompute throughput.

    python experiments/cache_size.py [--teacher vgg13] [--examples 512]

Builds caches for 3 teachers of the given architecture (random weights: size and speed do not
depend on them) over the first ``--examples`` digits images (32x32x3, the CIFAR shape) in each
storage dtype, and extrapolates to one CIFAR-100 epoch (50,000 examples per replay).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax import teachers as teachers_lib
from mmkd_jax.data import sources
from mmkd_jax.models import get_model
from mmkd_jax.teachers import cache as teacher_cache


def directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--teacher", default="vgg13")
  parser.add_argument("--examples", type=int, default=512)
  parser.add_argument("--num_classes", type=int, default=100)
  args = parser.parse_args()
  dataset = sources.open_dataset(config_lib.base_config())  # digits
  spec, source = dataset.spec, dataset.train
  loaded = []
  for i in range(3):
    variables = get_model(args.teacher, args.num_classes).init(jax.random.key(i), jnp.zeros((1, 32, 32, 3)))
    loaded.append(teachers_lib.Teacher(f"t{i}", args.teacher, args.num_classes, variables,
                                       teachers_lib.fingerprint(variables)))
  shapes = tuple(tuple(s) for s in teachers_lib.feature_shapes(loaded, spec.image_shape))
  variables = tuple(t.variables for t in loaded)
  forward = jax.jit(lambda images, index, replay: teachers_lib.augmented_teacher_outputs(
      loaded, variables, images, index, replay, 0, spec))

  def producer(indices, replay):
    images = sources.read_records(source, indices, spec)["image"]
    return jax.device_get(forward(images, indices.astype(np.int32), replay))

  producer(np.arange(256), 0)  # compile outside the timing
  values = 3 * args.num_classes + sum(int(np.prod(s)) for s in shapes)
  print(f"3 x {args.teacher}: logits 3 x {args.num_classes} + feat[-2] {shapes[0]} x 3 = {values} values/example")
  print("| dtype | bytes/example (raw) | bytes/example (on disk) | CIFAR-100 epoch (50,000) | precompute examples/s |")
  print("|---|---|---|---|---|")
  for dtype in ("bfloat16", "float16", "float32"):
    with tempfile.TemporaryDirectory() as d:
      cache_spec = teacher_cache.CacheSpec(tuple(t.name for t in loaded), tuple(t.fingerprint for t in loaded),
                                           "digits", "train", args.examples, 0, 1, "feat[-2]",
                                           args.num_classes, shapes, dtype)
      start = time.perf_counter()
      teacher_cache.write_cache(d, cache_spec, producer, batch_size=256)
      seconds = time.perf_counter() - start
      on_disk = directory_bytes(d) / args.examples
    raw = values * np.dtype(teacher_cache.STORAGE_DTYPES[dtype]).itemsize
    print(f"| {dtype} | {raw:,} | {on_disk:,.0f} | {on_disk * 50000 / 2**30:.2f} GiB | {args.examples / seconds:.0f} |")


if __name__ == "__main__":
  main()
