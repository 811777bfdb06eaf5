"""Training data in device memory (``config.data_placement``): the host only starts epochs.

The training split's images and labels, and the teacher outputs of the current replay, are
copied to every device once (replicated: each device gathers the rows of its share of a batch
from its own copy, so no step moves data between devices or from the host). A step gathers its
batch from the epoch's index array on the device (``pipeline.epoch_rows``, the host pipeline's
permutation); the gathered batch is the host pipeline's, key for key and bit for bit, and the
augmentation stays in the step. The next replay's teacher outputs are read on a host thread, in
bulk, while the current epoch trains.

``MemoryPlan`` says what that costs per device before anything is read; ``auto`` places the
data on the devices when it fits and streams it otherwise, saying why in one line.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmkd_jax.data import pipeline
from mmkd_jax.data.sources import read_records
from mmkd_jax.errors import ConfigError
from mmkd_jax.training import parallel

PLACEMENTS = ("host", "device", "auto")
# auto keeps the resident data and the step's temporaries within this share of a device's memory.
AUTO_SHARE = 0.75
_GIB = 2 ** 30


@flax.struct.dataclass
class Arrays:
  """What a step gathers from: every training record, and the current replay's teacher outputs
  (in their stored dtype) when the method reads cached ones."""
  image: jax.Array                 # (N, H, W, C) uint8
  label: jax.Array                 # (N,) int32
  replay: jax.Array                # () int32: the replay (or epoch) the batches carry
  teacher_logits: Any = None       # (N, T, classes)
  teacher_feat: tuple = ()         # T maps (N, h, w, c)


def gather(arrays: Arrays, rows: jax.Array) -> dict[str, Any]:
  """The raw batch of record positions ``rows`` (any leading shape), as the host pipeline makes it."""
  raw = {"image": arrays.image[rows], "label": arrays.label[rows], "index": rows.astype(jnp.int32),
         "replay": jnp.full(rows.shape, arrays.replay, jnp.int32)}
  if arrays.teacher_logits is not None:
    raw["teacher_logits"] = arrays.teacher_logits[rows].astype(jnp.float32)
    raw["teacher_feat"] = tuple(f[rows].astype(jnp.float32) for f in arrays.teacher_feat)
  return raw


def unsupported(dataset: str, spec: Any) -> str | None:
  """Why a dataset's training data cannot live on the devices, or None."""
  if spec.host_transform:
    return (f"dataset {dataset!r} has images of varying size, cut to {spec.image_shape[:2]} on the host "
            "(its crops differ per epoch)")
  return None


def check_placement(config: Any, spec: Any) -> None:
  """Refuses ``data_placement=device`` for a dataset that cannot be placed (before any write)."""
  reason = unsupported(config.dataset, spec)
  if reason and config.data_placement == "device":
    raise ConfigError(f"config.data_placement: device is not possible: {reason}; use host or auto")


def uses_cache(setup: Any) -> bool:
  return setup.cache is not None and setup.method_spec.needs_teachers and not setup.steps.online


def abstract_arrays(setup: Any, sharding: Any) -> Arrays:
  """The shapes, dtypes and sharding of a run's ``Arrays`` (to compile before reading anything)."""
  n = len(setup.dataset.train)
  struct = lambda shape, dtype: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)
  arrays = Arrays(struct((n, *setup.spec.image_shape), jnp.uint8), struct((n,), jnp.int32), struct((), jnp.int32))
  if not uses_cache(setup):
    return arrays
  cache = setup.cache.spec
  return arrays.replace(teacher_logits=struct((n, len(cache.teacher_names), cache.num_classes), cache.logits_dtype),
                        teacher_feat=tuple(struct((n, *shape), cache.dtype) for shape in cache.feature_shapes))


def rows_sharding(mesh: jax.sharding.Mesh, stacked: bool) -> NamedSharding:
  """An epoch's index array, (steps, B) or (R, steps, B): sharded like the batches it selects."""
  return NamedSharding(mesh, P("replica", None, "data") if stacked else P(None, "data"))


def device_budget() -> tuple[int, str]:
  """Bytes one device may hold, and where that figure comes from."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"]), "device memory"
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return host // max(1, jax.local_device_count()), "host memory shared by the CPU devices"


@dataclasses.dataclass
class MemoryPlan:
  """Bytes per device of device-resident training."""
  images: int                 # images and labels of the training and evaluation splits
  teacher_per_replay: int     # cached teacher outputs of one replay (0: none read)
  replays: int                # replays the cache holds (the next is swapped in at an epoch start)
  temporaries: int | None     # the compiled step's temporaries (XLA memory analysis), once known
  budget: int
  budget_source: str

  @property
  def resident(self) -> int:
    # While a new replay is put in place the old one is still referenced: both for a moment.
    return self.images + self.teacher_per_replay * (2 if self.replays > 1 else 1)

  @property
  def total(self) -> int:
    return self.resident + (self.temporaries or 0)

  def fits(self) -> bool:
    return self.total <= AUTO_SHARE * self.budget

  def describe(self) -> str:
    temps = "not compiled yet" if self.temporaries is None else f"{self.temporaries / _GIB:.3f} GiB"
    return (f"memory plan per device: images {self.images / _GIB:.3f} GiB, teacher outputs "
            f"{self.teacher_per_replay / _GIB:.3f} GiB per replay (x{2 if self.replays > 1 else 1} while the next "
            f"replay is swapped in), step temporaries and outputs {temps}; {self.total / _GIB:.3f} GiB of "
            f"{self.budget / _GIB:.1f} GiB {self.budget_source}")


def plan(setup: Any) -> MemoryPlan:
  """The plan from shapes alone (nothing is read)."""
  n = len(setup.dataset.train)
  records = n + len(setup.dataset.test)
  images = records * (int(np.prod(setup.spec.image_shape)) + 4)
  teacher = 0
  if uses_cache(setup):
    spec = setup.cache.spec
    itemsize = lambda name: jnp.dtype(name).itemsize
    teacher = n * (len(spec.teacher_names) * spec.num_classes * itemsize(spec.logits_dtype)
                   + sum(int(np.prod(s)) for s in spec.feature_shapes) * itemsize(spec.dtype))
  budget, source = device_budget()
  return MemoryPlan(images, teacher, setup.cache.spec.num_replays if teacher else 1, None, budget, source)


def _read_split(source: Any, spec: Any, chunk: int) -> dict[str, np.ndarray]:
  """Every record of a split: images (N, H, W, C) uint8 and labels (N,) int32."""
  n = len(source)
  parts = [read_records(source, np.arange(lo, min(lo + chunk, n)), spec) for lo in range(0, n, chunk)]
  return {k: np.concatenate([p[k] for p in parts]) for k in ("image", "label")}


class ResidentData:
  """The device copies of a run's training data; ``arrays(epoch)`` swaps replays in as needed."""

  def __init__(self, setup: Any, mesh: jax.sharding.Mesh, replay_of: Any, chunk: int = 4096):
    self.setup, self.mesh, self._replay_of = setup, mesh, replay_of
    self._replicated = NamedSharding(mesh, P())
    train = _read_split(setup.dataset.train, setup.spec, chunk)
    if setup.dataset.train_labels is not None:
      train["label"] = np.asarray(setup.dataset.train_labels, np.int32)
    self._base = self._put(train)
    self._test = self._put(_read_split(setup.dataset.test, setup.spec, chunk))
    self._batch_sharding = NamedSharding(mesh, P("data"))
    self._gather_eval = jax.jit(lambda test, rows, mask: {"image": test["image"][rows], "label": test["label"][rows],
                                                          "index": rows, "mask": mask},
                                out_shardings=self._batch_sharding)
    self._cache = setup.cache if uses_cache(setup) else None
    self._teacher: dict[str, Any] = {}
    self._loaded: int | None = None
    self._pool = concurrent.futures.ThreadPoolExecutor(1) if self._cache is not None else None
    self._reading: dict[int, concurrent.futures.Future] = {}

  def _put(self, tree: Any) -> Any:
    """Every process holds the whole (identical) arrays: each device gets a full copy."""
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, self._replicated, lambda i: x[i]), tree)

  def _replay_host(self, replay: int) -> dict[str, Any]:
    future = self._reading.pop(replay, None)
    return future.result() if future is not None else self._cache.replay_arrays(replay)

  def arrays(self, epoch: int) -> Arrays:
    """The arrays of ``epoch``; starts reading the next epoch's replay when it differs."""
    replay = self._replay_of(epoch)
    if self._cache is not None:
      if replay != self._loaded:
        self._teacher = {}  # the old replay's device arrays go before the new ones arrive
        self._teacher = self._put(self._replay_host(replay))
        self._loaded = replay
      following = self._replay_of(epoch + 1)
      if following != replay and following not in self._reading:
        self._reading[following] = self._pool.submit(self._cache.replay_arrays, following)
    return Arrays(self._base["image"], self._base["label"], jnp.asarray(replay, jnp.int32),
                  self._teacher.get("teacher_logits"), tuple(self._teacher.get("teacher_feat", ())))

  def rows(self, seeds: list[int], epoch: int, stacked: bool) -> jax.Array:
    """The epoch's record positions per step, (steps, B), or (R, steps, B) for stacked replicas
    (each its seed's order), sharded like the batches they select."""
    c, dataset = self.setup.config, self.setup.dataset
    per_seed = [pipeline.epoch_rows(len(dataset.train), c.batch_size, s, epoch, dataset.train_indices)
                for s in seeds]
    rows = (np.stack(per_seed) if stacked else per_seed[0]).astype(np.int32)
    return jax.make_array_from_callback(rows.shape, rows_sharding(self.mesh, stacked), lambda i: rows[i])

  def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
    """The evaluation split's batches as ``pipeline.eval_batches`` makes them, gathered on the
    devices (the batch rounded up to the devices; padding masked)."""
    rows, mask = pipeline.eval_rows(len(self.setup.dataset.test), parallel.rounded_batch(batch_size, self.mesh))
    rows, mask = (jax.make_array_from_callback(x.shape, NamedSharding(self.mesh, P(None, "data")), lambda i, x=x: x[i])
                  for x in (rows.astype(np.int32), mask))
    for b in range(rows.shape[0]):
      yield self._gather_eval(self._test, rows[b], mask[b])

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)
