"""Host-side rate of the training input pipeline, with and without the precomputed teacher cache.

    python experiments/input_pipeline.py [--examples 4096] [--batches 48] [--repeats 3]

CIFAR-size data built here (nothing downloaded): ``--examples`` random 32x32x3 images with 100
classes in a TFDS array_record dataset (the layout of the offline builders: raw uint8 tensors),
and a teacher cache of 3 teachers x (100 logits in float32 + an 8x8x256 feature map in bfloat16),
the CIFAR-100 vgg13 / resnet32x4 shapes, written by ``teachers.cache.write_cache`` from random
outputs. Measures ``data.pipeline.train_batches`` (grain, the trainer's own code path) in
batches/s and images/s for 1 and 2 reader threads, images only vs images joined to the cache,
each the median of ``--repeats`` passes over ``--batches`` batches of 64 after one warm-up batch,
and the same through ``parallel.prefetch_to_device`` (device arrays, as the step receives them).
Prints a markdown table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import tensorflow_datasets as tfds

from mmkd_jax.training import parallel
from mmkd_jax.data import pipeline
from mmkd_jax.data.sources import DatasetSpec
from mmkd_jax.teachers import cache as teacher_cache

NUM_CLASSES, TEACHERS, FEATURE_SHAPE = 100, 3, (8, 8, 256)


class RandomCifar(tfds.core.GeneratorBasedBuilder):
  """Random 32x32x3 uint8 images with labels in [0, 100), stored as the offline builders do."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Benchmark data."}

  def __init__(self, *, examples: int, **kwargs):
    self._examples = examples
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)}), supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(self._examples):
      yield i, {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": int(rng.integers(NUM_CLASSES))}


def build_data(root: str, examples: int):
  builder = RandomCifar(examples=examples, data_dir=os.path.join(root, "tfds"), file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  source = builder.as_data_source(split="train")
  spec = DatasetSpec("random_cifar", NUM_CLASSES, (32, 32, 3), (0.5,) * 3, (0.25,) * 3)
  cache_spec = teacher_cache.CacheSpec(
      teacher_names=tuple(f"t{i}" for i in range(TEACHERS)), teacher_fingerprints=("random",) * TEACHERS,
      dataset="random_cifar", split="train", num_examples=examples, augmentation_seed=0, num_replays=1,
      feature_layer="-2", num_classes=NUM_CLASSES, feature_shapes=(FEATURE_SHAPE,) * TEACHERS)
  rng = np.random.default_rng(1)

  def producer(indices, replay):
    del replay
    n = len(indices)
    return (rng.standard_normal((n, TEACHERS, NUM_CLASSES), dtype=np.float32),
            [rng.standard_normal((n, *FEATURE_SHAPE), dtype=np.float32) for _ in range(TEACHERS)])

  cache_dir = os.path.join(root, "cache")
  teacher_cache.write_cache(cache_dir, cache_spec, producer)
  return source, spec, teacher_cache.TeacherCache(cache_dir, cache_spec)


def rate(make_batches, batches: int, repeats: int, to_device: bool, mesh) -> float:
  """Median batches/s over ``repeats`` passes (the first batch of each pass not timed)."""
  rates = []
  for r in range(repeats):
    iterator = make_batches(r)
    if to_device:
      iterator = parallel.prefetch_to_device(iterator, mesh)
    first = next(iterator)
    if to_device:
      jax.block_until_ready(first)
    tic = time.perf_counter()
    count = 0
    for batch in iterator:
      if to_device:
        jax.block_until_ready(batch)
      count += 1
      if count == batches:
        break
    rates.append(count / (time.perf_counter() - tic))
  return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--examples", type=int, default=4096)
  parser.add_argument("--batches", type=int, default=48)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--out", default="runs/input_pipeline.json")
  args = parser.parse_args(argv)
  mesh = parallel.data_mesh()
  rows = []
  with tempfile.TemporaryDirectory() as root:
    tic = time.perf_counter()
    source, spec, cache = build_data(root, args.examples)
    print(f"built {args.examples} images and their cache in {time.perf_counter() - tic:.0f} s "
          f"({teacher_cache.example_bytes(cache.spec)} bytes of teacher outputs per example)")
    for threads in (1, 2):
      for with_cache in (False, True):
        join = (lambda i, e: cache.lookup(i, e)) if with_cache else None

        def make(epoch, threads=threads, join=join):
          return iter(pipeline.train_batches(source, spec, args.batch_size, 0, epoch, join=join, num_threads=threads))
        for to_device in (False, True):
          batches_s = rate(make, args.batches, args.repeats, to_device, mesh)
          rows.append({"threads": threads, "teacher_cache": with_cache, "to_device": to_device,
                       "batches_per_s": batches_s, "images_per_s": batches_s * args.batch_size})
          print(rows[-1], flush=True)
  print(f"\nbackend {jax.default_backend()}, {os.cpu_count()} CPUs, batch {args.batch_size}\n")
  print("| reader threads | teacher cache joined | delivered as | batches/s | images/s |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['threads']} | {'yes' if r['teacher_cache'] else 'no'} | "
          f"{'device arrays (prefetch_to_device)' if r['to_device'] else 'host numpy'} | "
          f"{r['batches_per_s']:.1f} | {r['images_per_s']:.0f} |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"backend": jax.default_backend(), "cpus": os.cpu_count(), "batch_size": args.batch_size,
               "examples": args.examples, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
