"""Evaluation: every example exactly once, padding masked, top-1 / top-5 as the tables report them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mmkd_jax import evaluation, parallel
from mmkd_jax.data.sources import DatasetSpec
from mmkd_jax.steps import eval_sums


def test_masked_sums_count_only_real_rows():
  logits = jnp.array([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 0, 9, 0, 0, 0]])
  labels = jnp.array([0, 0, 1, 2])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])  # the last row is padding (it would be a top-1 hit)
  sums = {k: float(v) for k, v in eval_sums(logits, labels, mask).items()}
  # row 0: top-1 hit; row 1: label 0 is the smallest logit (miss in top-5 too); row 2: label 1 second
  assert sums == {"top1": 1.0, "top5": 2.0, "count": 3.0,
                  "loss": _reference_loss(logits[:3], labels[:3])}


def _reference_loss(logits, labels):
  log_p = logits - np.log(np.sum(np.exp(np.asarray(logits, np.float64)), -1, keepdims=True))
  return float(-np.sum(np.asarray(log_p)[np.arange(len(labels)), np.asarray(labels)]))


def test_accumulate_covers_a_split_once_with_padding():
  """10 examples in batches of 4 (two padded rows): top-1 from a stand-in model equals the
  direct count over the 10 examples."""
  rng = np.random.default_rng(0)
  records = [{"image": rng.integers(0, 256, (4, 4, 1)).astype(np.uint8), "label": int(rng.integers(0, 3))}
             for _ in range(10)]
  spec = DatasetSpec("toy", 3, (4, 4, 1), (0.5,), (0.25,))

  def sums(raw):  # a stand-in model: the class is the pixel sum modulo 3
    logits = jnp.eye(3)[(jnp.sum(raw["image"].astype(jnp.int32), axis=(1, 2, 3)) % 3)]
    return eval_sums(logits, raw["label"], raw["mask"])

  totals = evaluation.accumulate(sums, records, spec, 4, parallel.data_mesh())
  predicted = np.array([int(r["image"].astype(np.int64).sum() % 3) for r in records])
  assert totals["count"] == 10.0
  assert totals["top1"] == float(np.sum(predicted == np.array([r["label"] for r in records])))
