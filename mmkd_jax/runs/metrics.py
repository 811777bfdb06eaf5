"""Metric logs: JSON lines (``metrics.jsonl``) and TensorBoard event files, from process 0."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import jax
import numpy as np

from mmkd_jax.runs import storage


def _import_tensorboardx_without_torch():
  """tensorboardX's writer imports torch where it is installed, only to accept torch tensors
  (we log floats): 4 s of every command's start on a 2-core CPU. A ``None`` in ``sys.modules``
  makes that import fail for the duration (tensorboardX then takes numpy arrays), and a later
  ``import torch`` works as usual. Where torch is loaded already it costs nothing and is used."""
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None
  try:
    import tensorboardX  # pylint: disable=import-outside-toplevel
    import tensorboardX.record_writer  # pylint: disable=import-outside-toplevel
  finally:
    if blocked:
      del sys.modules["torch"]
  return tensorboardX


tensorboardX = _import_tensorboardx_without_torch()


class MetricWriter:
  """Scalars and vectors (as ``key/i``) go to both logs; matrices only to the JSONL log. Each
  JSONL record carries its wall-clock ``time``.

  ``resume_step``: the step the run continues from. Records after it (written by the session that
  stopped after its last checkpoint) are dropped from ``metrics.jsonl``, and TensorBoard purges
  them too, so each step is logged once however often a run resumes.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.path = storage.join(workdir, "metrics.jsonl")
    self.remote = storage.is_url(workdir)
    logged = storage.read_text(self.path).splitlines(keepends=True) if storage.is_file(self.path) else []
    kept = _records_until(logged, resume_step)
    if kept != logged:
      storage.write_text(self.path, "".join(kept))
    if self.remote:  # object stores cannot append: the log is kept here and rewritten whole
      self.lines, self.uploaded = kept, len(kept)
    else:
      self.jsonl = storage.as_path(self.path).open("a")
    if self.remote:
      _route_tensorboard_through_storage(workdir)
    self.tb = tensorboardX.SummaryWriter(storage.for_library(storage.join(workdir, "tensorboard")),
                                         purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    flat, nested = {}, {}
    for k, v in scalars.items():
      v = np.asarray(v)
      if v.ndim == 0:
        flat[k] = float(v) if v.dtype.kind == "f" else int(v)
      elif v.ndim == 1:  # one scalar per entry (an undefined one, NaN, left out)
        flat.update({f"{k}/{i}": float(x) for i, x in enumerate(v) if np.isfinite(x)})
      else:
        v = np.round(v.astype(np.float64), 6)
        nested[k] = np.where(np.isfinite(v), v, None).tolist()  # JSON has no NaN
    line = json.dumps({"step": step, "time": round(time.time(), 3), **flat, **nested}) + "\n"
    if self.remote:
      self.lines.append(line)
    else:
      self.jsonl.write(line)
      self.jsonl.flush()
    if self.tb is not None:
      for k, v in flat.items():
        if isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)

  def flush(self) -> None:
    """Makes every record written so far durable: on an object store the loop calls it with each
    checkpoint, so the log always reaches at least the step a resumed run starts from."""
    if self.enabled and self.remote and self.uploaded != len(self.lines):
      storage.write_text(self.path, "".join(self.lines))
      self.uploaded = len(self.lines)
    if self.enabled and self.tb is not None:
      self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.flush()
      if not self.remote:
        self.jsonl.close()
      if self.tb is not None:
        self.tb.close()


class _ObjectEventFile:
  """A TensorBoard event file on an object store: kept in memory, rewritten whole at each flush
  (tensorboardX's own GCS writer also flushes from ``__del__``, which at interpreter exit can
  outlive the server: seconds of retries, or a hang)."""

  def __init__(self, path: str):
    self.path, self.buffer, self.flushed = path, bytearray(), 0

  def write(self, data: bytes) -> None:
    self.buffer += data

  def flush(self) -> None:
    if self.flushed != len(self.buffer):
      storage.as_path(self.path).write_bytes(bytes(self.buffer))
      self.flushed = len(self.buffer)

  def close(self) -> None:
    self.flush()


class _ObjectEventFiles:
  """A tensorboardX writer factory for object-store URLs (``register_writer_factory``)."""

  def open(self, path: str) -> _ObjectEventFile:
    return _ObjectEventFile(path)

  def directory_check(self, path: str) -> None:
    del path  # object stores have no directories


def _route_tensorboard_through_storage(url: str) -> None:
  tensorboardX.record_writer.register_writer_factory(url.split("://")[0], _ObjectEventFiles())


def _records_until(lines: list[str], step: int) -> list[str]:
  """The lines of a log for steps up to ``step`` (dropping a torn last line of a killed writer):
  what a run resumed from ``step`` keeps."""
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get("step", 0) <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  return kept


Sums = dict[str, Any]  # {"sums": {key: float64 array}, "counts": {key: int}}


def _add(total: Sums, step_metrics: dict[str, Any]) -> None:
  for k, v in step_metrics.items():
    v = np.asarray(v, np.float64)
    total["sums"][k] = total["sums"][k] + v if k in total["sums"] else v.copy()
    total["counts"][k] = total["counts"].get(k, 0) + 1


def _empty(carried: dict | None = None) -> Sums:
  if not carried:
    return {"sums": {}, "counts": {}}
  return {"sums": {k: np.asarray(v, np.float64) for k, v in carried["sums"].items()},
          "counts": dict(carried["counts"])}


def _means(total: Sums) -> dict[str, np.ndarray]:
  return {k: total["sums"][k] / total["counts"][k] for k in sorted(total["sums"])}


def _jsonable(total: Sums) -> dict:
  return {"sums": {k: v.tolist() for k, v in total["sums"].items()}, "counts": dict(total["counts"])}


class StepLog:
  """One epoch's step metrics on the host: float64 sums in step order over the epoch and over
  windows of ``window`` steps (aligned to the epoch's first step), fetched one window late so
  reading them stalls nothing.

  A run stopped mid-epoch keeps the sums of its steps in the checkpoint (``carry``); the session
  that resumes continues them, so the logged windows and epoch means equal an uninterrupted run's
  bit for bit.
  """

  def __init__(self, window: int, first_batch: int, carry: dict | None = None):
    self.window = window
    carry = carry or {}
    self.epoch = _empty(carry.get("epoch"))
    self._window_carry = carry.get("window")  # sums of the current window's steps before the resume
    self._pending: list[dict[str, Any]] = []        # this session's device metrics of the epoch
    self._complete: list[tuple[int, int, int, dict | None]] = []  # windows to log: (last idx, start, end, carry)
    self._first_batch = first_batch
    self._epoch_means = None

  @property
  def steps(self) -> list[dict[str, Any]]:
    return self._pending

  def add(self, idx: int, metrics: dict[str, Any]) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Adds step ``idx``'s metrics; returns the windows ready to log, as (last idx, means)."""
    self._pending.append(metrics)
    if (idx + 1) % self.window:
      return []
    end = len(self._pending)
    start = max(0, end - self.window)
    carried = self._window_carry if end - start < self.window else None
    self._window_carry = None
    self._complete.append((idx, start, end, carried))
    return self.flush(keep_last=True)

  def flush(self, keep_last: bool = False) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Every complete window not yet logged (all but the newest with ``keep_last``)."""
    ready = self._complete[:-1] if keep_last else self._complete
    self._complete = self._complete[-1:] if keep_last else []
    out = []
    for idx, start, end, carried in ready:
      total = _empty(carried)
      for m in jax.device_get(self._pending[start:end]):
        _add(total, m)
      out.append((idx, _means(total)))
    return out

  def epoch_means(self) -> dict[str, np.ndarray]:
    """Means over the whole epoch (carried steps included)."""
    if self._epoch_means is None:
      self._epoch_means = self._sum_epoch()
    return dict(self._epoch_means)

  def _sum_epoch(self) -> dict[str, np.ndarray]:
    return _means(self._epoch_total(jax.device_get(self._pending)))

  def _epoch_total(self, fetched: list[dict[str, Any]]) -> Sums:
    """The carried sums continued over this session's (fetched) steps."""
    total = _empty(_jsonable(self.epoch))
    for m in fetched:
      _add(total, m)
    return total

  def replica(self, k: int) -> "_ReplicaSlice":
    return _ReplicaSlice(self, k)

  def carry(self, last_idx: int) -> dict:
    """What a checkpoint at step ``last_idx`` of this epoch keeps: the epoch's sums so far and
    those of the window it is in."""
    fetched = jax.device_get(self._pending)
    total = self._epoch_total(fetched)
    in_window = (last_idx + 1) % self.window
    from_pending = min(in_window, len(fetched))
    window = _empty(self._window_carry if from_pending < in_window else None)
    for m in fetched[len(fetched) - from_pending:]:
      _add(window, m)
    return {"epoch": _jsonable(total), "window": _jsonable(window) if in_window else None}


class _ReplicaSlice:
  """Replica k's view of a StepLog over stacked replica metrics, for its end of epoch (the
  replica loop logs the windows of all replicas itself)."""

  def __init__(self, log: StepLog, k: int):
    self._log, self._k = log, k

  def flush(self) -> list:
    return []

  def epoch_means(self) -> dict[str, np.ndarray]:
    return {key: np.asarray(v)[self._k] for key, v in self._log.epoch_means().items()}


def mean_metrics(pending: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Per-key means over a list of step metrics (fetched from the device), summed in float64 in
  step order."""
  total = _empty()
  for m in jax.device_get(pending):
    _add(total, m)
  return _means(total)


def eval_name(spec) -> str:
  """'test' when evaluating on the dataset's test split, else 'val' (model selection)."""
  return "test" if spec.test_split.split("[")[0] == "test" else "val"


TEACHER_WEIGHTS_PREFIX = "teacher_weights_"   # step metrics: mean per-teacher weights of a kind


def tagged_train_metrics(means: dict[str, np.ndarray], teacher_names: list[str]) -> dict[str, Any]:
  """Step-metric means under grouped names: ``train/...`` (accuracy in percent),
  ``teacher_weights/{logits,feature}/<teacher>``."""
  out: dict[str, Any] = {}
  for key, value in means.items():
    if key in ("class_weight_sums", "class_counts"):
      continue
    if key.startswith(TEACHER_WEIGHTS_PREFIX):  # a TeacherWeights kind's batch mean (steps.train_step)
      kind = key[len(TEACHER_WEIGHTS_PREFIX):]
      for i, v in enumerate(np.asarray(value)):
        out[f"teacher_weights/{kind}/{teacher_names[i] if i < len(teacher_names) else i}"] = float(v)
    elif key == "accuracy":
      out["train/accuracy"] = 100.0 * float(value)
    elif key.startswith("diag_"):
      out[f"train/diag/{key[len('diag_'):]}"] = float(value)
    else:
      out[f"train/{key}"] = value if np.ndim(value) else float(value)
  return out
