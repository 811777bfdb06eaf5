"""Evaluation over a split: the student, each teacher and their ensemble (one accumulation loop)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.training import parallel
from mmkd_jax.data import pipeline
from mmkd_jax.data.augment import normalize
from mmkd_jax.data.sources import DatasetSpec
from mmkd_jax.distill import losses
from mmkd_jax.models import get_model
from mmkd_jax.evaluation.evaluators import EvalBatch, Evaluators, build_evaluators
from mmkd_jax.teachers import Teacher, teacher_forward


def accumulate(sums_fn: Callable[[dict[str, Any]], Any], source: Any, spec: DatasetSpec,
               batch_size: int, mesh: Any, batches: Iterable[dict[str, Any]] | None = None) -> Any:
  """Sums ``sums_fn(sharded raw batch)`` (a tree of arrays) over the split, every example once,
  padding masked, in float64 on the host. ``batches``: the split's device batches when they are
  not streamed from ``source`` (``data.resident``). Every batch is dispatched before any result
  is read, so the device does not wait on the host between batches."""
  if batches is None:
    batches = (parallel.shard_batch(raw, mesh) for raw in pipeline.eval_batches(
        source, spec, parallel.rounded_batch(batch_size, mesh), jax.process_index(), jax.process_count()))
  totals = None
  for got in jax.device_get([sums_fn(raw) for raw in batches]):
    got = jax.tree.map(lambda x: np.asarray(x, np.float64), got)
    totals = got if totals is None else jax.tree.map(np.add, totals, got)
  return totals


def evaluate_student(eval_fn: Callable, state: Any, source: Any, spec: DatasetSpec, batch_size: int, mesh: Any,
                     evaluators: Evaluators, batches: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
  """The metrics of ``evaluators`` for ``eval_fn(state, raw) -> evaluators.sums(...)``."""
  return evaluators.finish(accumulate(lambda raw: eval_fn(state, raw), source, spec, batch_size, mesh, batches))


def teacher_accuracy(teachers: Sequence[Teacher], source: Any, spec: DatasetSpec, batch_size: int,
                     mesh: Any, layer: int = -2) -> dict[str, float]:
  """Top-1 (percent) of each teacher and of the ensemble (mean logits) on a split."""
  if not teachers:
    return {}

  @jax.jit
  def sums(teacher_vars, raw):
    x = normalize(raw["image"], spec.mean, spec.std)
    logits, _ = teacher_forward(teachers, teacher_vars, x, layer)
    out = {f"teacher/{t.name}": jnp.sum(losses.top_k_correct(logits[:, i], raw["label"], 1) * raw["mask"])
           for i, t in enumerate(teachers)}
    out["teacher/ensemble"] = jnp.sum(losses.top_k_correct(jnp.mean(logits, 1), raw["label"], 1) * raw["mask"])
    out["count"] = jnp.sum(raw["mask"])
    return out

  teacher_vars = tuple(t.variables for t in teachers)
  totals = accumulate(lambda raw: sums(teacher_vars, raw), source, spec, batch_size, mesh)
  count = totals.pop("count")
  return {k: 100.0 * float(v) / count for k, v in totals.items()}


def student_against_teachers(student, teachers: Sequence[Teacher], source: Any, spec: DatasetSpec,
                             batch_size: int, mesh: Any, names: Sequence[str], layer: int = -2) -> dict[str, Any]:
  """A loaded student (``student.load_student``) through the evaluators ``names``, with the
  teachers' logits for those that read them (``teachers``: agreement and KL with each)."""
  model = get_model(student.arch, student.num_classes)
  evaluators = build_evaluators(names, spec.num_classes, [t.name for t in teachers])

  @jax.jit
  def sums(variables, teacher_vars, raw):
    x = normalize(raw["image"], spec.mean, spec.std)
    logits = model.apply(variables, x, train=False)[1]
    t_logits = teacher_forward(teachers, teacher_vars, x, layer)[0] if teachers and evaluators.needs_teachers else None
    return evaluators.sums(EvalBatch(logits, raw["label"], raw["mask"], t_logits))

  teacher_vars = tuple(t.variables for t in teachers)
  return evaluators.finish(accumulate(lambda raw: sums(student.variables, teacher_vars, raw), source, spec,
                                      batch_size, mesh))
