"""Streaming input pipeline: grain over a TFDS random-access source.

Training: each epoch is a seeded permutation of the split cut into global batches
(drop-remainder); process p reads rows ``[p * B/P, (p+1) * B/P)`` of every global batch, so
the union over processes is exactly the single-process batch (multi-host runs reproduce
single-host ones). A run resumes mid-epoch by starting at a batch position.

Evaluation: the split is covered exactly once; the last global batch is padded (with record
0) and carries ``mask = 0`` on the padding.

Batches are numpy dicts: ``image`` uint8 (b, H, W, 3), ``label`` int32, ``index`` int32 (the
record position, which keys augmentation and the teacher cache), and ``mask`` float32 for eval.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import grain
import numpy as np

from mmkd_jax.data.sources import DatasetSpec, read_records

Batch = dict[str, np.ndarray]
Join = Callable[[np.ndarray, int], dict[str, Any]]


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  steps = num_examples // global_batch
  if steps == 0:
    raise ValueError(f"the split has {num_examples} examples, fewer than one batch of {global_batch}")
  return steps


def _local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  if global_batch % process_count:
    raise ValueError(f"batch_size {global_batch} is not divisible by the process count {process_count}")
  local = global_batch // process_count
  return slice(process_index * local, (process_index + 1) * local)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def epoch_rows(num_records: int, global_batch: int, seed: int, epoch: int,
               subset: np.ndarray | None = None) -> np.ndarray:
  """The record positions of every global batch of a training epoch, (steps, global_batch):
  a seeded permutation of ``subset`` (default: every record), the partial last batch dropped."""
  positions = np.arange(num_records) if subset is None else np.asarray(subset)
  n = len(positions)
  steps = steps_per_epoch(n, global_batch)
  return positions[epoch_permutation(n, seed, epoch)[: steps * global_batch]].reshape(steps, global_batch)


def train_batches(source: Any, spec: DatasetSpec, global_batch: int, seed: int, epoch: int,
                  start_batch: int = 0, process_index: int = 0, process_count: int = 1,
                  join: Join | None = None, num_threads: int = 2,
                  train_view: tuple[int, int] | None = None, subset: np.ndarray | None = None,
                  labels: np.ndarray | None = None) -> Iterator[Batch]:
  """The batches of one training epoch for this process, from ``start_batch`` on.

  ``join(indices, epoch)`` may add per-example arrays (e.g. cached teacher outputs);
  ``train_view = (augmentation seed, replay)`` cuts variable-size images on the host
  (``sources.read_records``); ``subset``: the record positions to draw from (default all);
  ``labels``: the label of every record position to train on instead of the records' own.
  """
  rows = epoch_rows(len(source), global_batch, seed, epoch, subset)
  steps = len(rows)
  rows = rows[:, _local_slice(global_batch, process_index, process_count)]

  def load(b: int) -> Batch:
    indices = rows[b]
    batch = read_records(source, indices, spec, train_view)
    if labels is not None:
      batch["label"] = labels[indices].astype(np.int32)
    batch["index"] = indices.astype(np.int32)
    if join is not None:
      batch.update(join(indices, epoch))
    return batch

  dataset = grain.MapDataset.range(start_batch, steps).map(load)
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2)
  yield from dataset.to_iter_dataset(read_options=options)


def eval_rows(num_examples: int, global_batch: int) -> tuple[np.ndarray, np.ndarray]:
  """The record positions and mask of every evaluation batch, (steps, global_batch) each: the
  split in order, the last batch padded with record 0 under mask 0."""
  steps = -(-num_examples // global_batch)
  positions = np.arange(steps * global_batch)
  mask = (positions < num_examples).astype(np.float32).reshape(steps, global_batch)
  return np.where(positions < num_examples, positions, 0).reshape(steps, global_batch), mask


def eval_batches(source: Any, spec: DatasetSpec, global_batch: int, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 2) -> Iterator[Batch]:
  """Every example of the split exactly once, in order; padding has ``mask == 0``."""
  rows, mask = eval_rows(len(source), global_batch)
  steps = len(rows)
  local = _local_slice(global_batch, process_index, process_count)
  rows, mask = rows[:, local], mask[:, local]

  def load(b: int) -> Batch:
    batch = read_records(source, rows[b], spec)
    batch["index"] = rows[b].astype(np.int32)
    batch["mask"] = mask[b]
    return batch

  dataset = grain.MapDataset.range(steps).map(load)
  yield from dataset.to_iter_dataset(read_options=grain.ReadOptions(num_threads=num_threads,
                                                                      prefetch_buffer_size=2))
