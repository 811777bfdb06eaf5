"""The evaluators against hand-computed values and an independent ECE reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax.evaluation import evaluators as evaluators_lib
from mmkd_jax.evaluation.evaluators import EvalBatch, Evaluator, build_evaluators


def _run(names, logits, labels, mask=None, teacher_logits=None, teacher_names=()):
  logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels)
  mask = jnp.ones(labels.shape) if mask is None else jnp.asarray(mask, jnp.float32)
  evaluators = build_evaluators(names, logits.shape[-1], teacher_names)
  t = None if teacher_logits is None else jnp.asarray(teacher_logits, jnp.float32)
  totals = jax.tree.map(lambda x: np.asarray(x, np.float64), evaluators.sums(EvalBatch(logits, labels, mask, t)))
  return evaluators.finish(totals)


def _reference_loss(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def test_accuracy_counts_only_real_rows_and_reports_top5_only_over_5_classes():
  logits = np.array([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 0, 9, 0, 0, 0]])
  labels = np.array([0, 0, 1, 2])
  # row 0: top-1 hit; row 1: label 0 is the smallest logit (a top-5 miss); row 2: label 1 second;
  # the last row is padding (it would be a top-1 hit)
  result = _run(("accuracy",), logits, labels, mask=[1, 1, 1, 0])
  assert result["top1"] == pytest.approx(100 / 3) and result["top5"] == pytest.approx(200 / 3)
  assert result["loss"] == pytest.approx(_reference_loss(logits[:3], labels[:3]), rel=1e-6)
  four = _run(("accuracy",), logits[:, :4], labels)
  assert set(four) == {"top1", "loss"}  # top-5 of 4 classes would always be 100


def test_per_class_accuracy_by_hand():
  logits = np.eye(3)[[0, 1, 1, 2, 0]] * 5  # predictions 0, 1, 1, 2, 0
  labels = np.array([0, 1, 2, 2, 1])
  result = _run(("per_class",), np.concatenate([logits, np.zeros((5, 1))], 1), labels)
  np.testing.assert_allclose(result["per_class_top1"][:3], [100.0, 50.0, 50.0])
  assert np.isnan(result["per_class_top1"][3])  # no example of class 3: undefined, not 0


def _ece_reference(probs, labels, bins=15):
  """ECE written out loop by loop: bins (i/n, (i+1)/n] of the top probability."""
  confidence, predicted = probs.max(1), probs.argmax(1)
  total = 0.0
  for i in range(bins):
    lo, hi = i / bins, (i + 1) / bins
    inside = (confidence > lo) & (confidence <= hi)
    if inside.any():
      total += inside.mean() * abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
  return total


def test_expected_calibration_error_matches_a_loop_reference_and_a_hand_case():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((200, 10)) * 3
  labels = rng.integers(0, 10, 200)
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  assert _run(("calibration",), logits, labels)["ece"] == pytest.approx(_ece_reference(probs, labels), abs=1e-6)
  # by hand: two examples at confidence 0.9 (one right), one at 0.6 (right): bins 14 and 9:
  # (2/3)|0.5 - 0.9| + (1/3)|1 - 0.6| = 0.4
  two = np.log(np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]]))
  assert _run(("calibration",), two, np.array([0, 0, 0]))["ece"] == pytest.approx(0.4, abs=1e-6)


def test_teacher_agreement_and_kl_by_hand():
  student = np.log(np.array([[0.5, 0.5], [0.8, 0.2]]))
  teachers = np.log(np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.2, 0.8], [0.8, 0.2]]]))  # (B, T, C)
  result = _run(("accuracy", "teachers"), student, np.array([0, 1]), teacher_logits=teachers,
                teacher_names=("a", "b"))
  kl = lambda p, q: float(np.sum(np.array(p) * np.log(np.array(p) / np.array(q))))
  assert result["teacher/a"] == 100.0 and result["teacher/b"] == 50.0  # b: a tie (class 0: right), then wrong
  assert result["agreement/a"] == 50.0 and result["agreement/b"] == 100.0  # the student's tie counts as class 0
  assert result["kl/a"] == pytest.approx((kl([0.9, 0.1], [0.5, 0.5]) + kl([0.2, 0.8], [0.8, 0.2])) / 2, rel=1e-5)
  assert result["kl/b"] == pytest.approx(0.0, abs=1e-6)
  assert _run(("teachers",), student, np.array([0, 1])) == {}  # no teachers: nothing to report


def test_a_registered_evaluator_is_chosen_by_name():
  @evaluators_lib.register_evaluator("margin_test")
  def margin(num_classes, teacher_names):
    del num_classes, teacher_names
    return Evaluator(lambda b: {"m": jnp.sum((jnp.max(b.logits, -1) - jnp.min(b.logits, -1)) * b.mask)},
                     lambda totals, count: {"margin": float(totals["m"]) / count})
  assert _run(("margin_test",), [[0.0, 2.0], [1.0, 0.0]], [0, 0])["margin"] == pytest.approx(1.5)
