"""Metric logs: JSON lines (``metrics.jsonl``) and TensorBoard event files, from process 0."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


class MetricWriter:
  """Scalars and vectors (as ``key/i``) go to both logs; matrices only to the JSONL log."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # optional
      self.tb = None

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    flat, nested = {}, {}
    for k, v in scalars.items():
      v = np.asarray(v)
      if v.ndim == 0:
        flat[k] = float(v) if v.dtype.kind == "f" else int(v)
      elif v.ndim == 1:
        for i, x in enumerate(v):
          flat[f"{k}/{i}"] = float(x)
      else:
        v = np.round(v.astype(np.float64), 6)
        nested[k] = np.where(np.isfinite(v), v, None).tolist()  # JSON has no NaN
    self.jsonl.write(json.dumps({"step": step, **flat, **nested}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in flat.items():
        if isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      if self.tb is not None:
        self.tb.close()


def mean_metrics(pending: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Per-key means over a list of step metrics (fetched from the device)."""
  fetched = jax.device_get(pending)
  keys = set().union(*[m.keys() for m in fetched]) if fetched else set()
  return {k: np.mean([np.asarray(m[k]) for m in fetched if k in m], axis=0) for k in sorted(keys)}


def eval_name(spec) -> str:
  """'test' when evaluating on the dataset's test split, else 'val' (model selection)."""
  return "test" if spec.test_split.split("[")[0] == "test" else "val"


def tagged_train_metrics(means: dict[str, np.ndarray], teacher_names: list[str]) -> dict[str, Any]:
  """Step-metric means under grouped names: ``train/...`` (accuracy in percent),
  ``teacher_weights/{logits,feature}/<teacher>``."""
  out: dict[str, Any] = {}
  for key, value in means.items():
    if key in ("class_weight_sums", "class_counts"):
      continue
    if key.startswith("mean_") and key.endswith("_weights"):
      kind = key[len("mean_"):-len("_weights")]
      for i, v in enumerate(np.asarray(value)):
        out[f"teacher_weights/{kind}/{teacher_names[i] if i < len(teacher_names) else i}"] = float(v)
    elif key == "accuracy":
      out["train/accuracy"] = 100.0 * float(value)
    elif key.startswith("diag_"):
      out[f"train/diag/{key[len('diag_'):]}"] = float(value)
    else:
      out[f"train/{key}"] = value if np.ndim(value) else float(value)
  return out
