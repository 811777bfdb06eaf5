"""Evaluation over a split: every example exactly once, padding masked."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mmkd_jax.evaluation import evaluate as evaluation
from mmkd_jax.training import parallel
from mmkd_jax.data.sources import DatasetSpec
from mmkd_jax.evaluation.evaluators import EvalBatch, build_evaluators


def test_accumulate_covers_a_split_once_with_padding():
  """10 examples in batches of 4 (two padded rows): top-1 from a stand-in model equals the
  direct count over the 10 examples."""
  rng = np.random.default_rng(0)
  records = [{"image": rng.integers(0, 256, (4, 4, 1)).astype(np.uint8), "label": int(rng.integers(0, 3))}
             for _ in range(10)]
  spec = DatasetSpec("toy", 3, (4, 4, 1), (0.5,), (0.25,))

  def sums(raw):  # a stand-in model: the class is the pixel sum modulo 3
    logits = jnp.eye(3)[(jnp.sum(raw["image"].astype(jnp.int32), axis=(1, 2, 3)) % 3)]
    return evaluators.sums(EvalBatch(logits, raw["label"], raw["mask"]))

  evaluators = build_evaluators(("accuracy", "per_class"), 3, ())
  totals = evaluation.accumulate(sums, records, spec, 4, parallel.data_mesh())
  predicted = np.array([int(r["image"].astype(np.int64).sum() % 3) for r in records])
  labels = np.array([r["label"] for r in records])
  assert totals["count"] == 10.0
  assert totals["accuracy"]["top1"] == float(np.sum(predicted == labels))
  np.testing.assert_array_equal(totals["per_class"]["count"], np.bincount(labels, minlength=3))
  result = evaluators.finish(totals)
  assert result["top1"] == 100.0 * np.mean(predicted == labels) and "top5" not in result  # 3 classes
