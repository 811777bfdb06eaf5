"""Evaluation over a split: the student, each teacher and their ensemble (one accumulation loop)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from mmkd_jax import parallel
from mmkd_jax.data import pipeline
from mmkd_jax.data.augment import normalize
from mmkd_jax.data.sources import DatasetSpec
from mmkd_jax.distill import losses
from mmkd_jax.models import get_model
from mmkd_jax.steps import eval_sums
from mmkd_jax.teachers import Teacher, teacher_forward


def rounded_batch(batch_size: int, mesh: Any) -> int:
  """The eval batch rounded up to a multiple of the devices (padding rows are masked)."""
  devices = parallel.data_devices(mesh)
  return -(-batch_size // devices) * devices


def accumulate(sums_fn: Callable[[dict[str, Any]], dict[str, jax.Array]], source: Any, spec: DatasetSpec,
               batch_size: int, mesh: Any) -> dict[str, float]:
  """Sums ``sums_fn(sharded raw batch)`` over the split (every example once, padding masked)."""
  totals: dict[str, float] = {}
  for raw in pipeline.eval_batches(source, spec, rounded_batch(batch_size, mesh), jax.process_index(),
                                   jax.process_count()):
    for k, v in jax.device_get(sums_fn(parallel.shard_batch(raw, mesh))).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return totals


def student_accuracy(eval_fn: Callable, state: Any, source: Any, spec: DatasetSpec, batch_size: int,
                     mesh: Any) -> dict[str, float]:
  """Top-1 / top-5 (percent) and mean loss of ``eval_fn(state, raw) -> masked sums``."""
  totals = accumulate(lambda raw: eval_fn(state, raw), source, spec, batch_size, mesh)
  count = max(totals.get("count", 0.0), 1.0)
  return {"top1": 100.0 * totals["top1"] / count, "top5": 100.0 * totals["top5"] / count,
          "loss": totals["loss"] / count}


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
  return {k: 100.0 * v / count for k, v in totals.items()}


def student_against_teachers(student, teachers: Sequence[Teacher], source: Any, spec: DatasetSpec,
                             batch_size: int, mesh: Any, layer: int = -2) -> dict[str, float]:
  """The student's top-1 / top-5 / loss and, per teacher, its accuracy and the student-teacher
  top-1 agreement and KL(p_t || p_s) (big_vision's distill evaluators); and the ensemble's."""
  model = get_model(student.arch, student.num_classes)

  @jax.jit
  def sums(variables, teacher_vars, raw):
    x = normalize(raw["image"], spec.mean, spec.std)
    logits = model.apply(variables, x, train=False)[1]
    out = eval_sums(logits, raw["label"], raw["mask"])
    if teachers:
      t_logits, _ = teacher_forward(teachers, teacher_vars, x, layer)
      log_p_s = jax.nn.log_softmax(logits, -1)
      for i, t in enumerate(teachers):
        z = t_logits[:, i]
        log_p_t = jax.nn.log_softmax(z, -1)
        out[f"teacher/{t.name}"] = jnp.sum(losses.top_k_correct(z, raw["label"], 1) * raw["mask"])
        out[f"agreement/{t.name}"] = jnp.sum((jnp.argmax(z, -1) == jnp.argmax(logits, -1)) * raw["mask"])
        out[f"kl/{t.name}"] = jnp.sum(jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), -1) * raw["mask"])
      out["teacher/ensemble"] = jnp.sum(losses.top_k_correct(jnp.mean(t_logits, 1), raw["label"], 1) * raw["mask"])
    return out

  teacher_vars = tuple(t.variables for t in teachers)
  totals = accumulate(lambda raw: sums(student.variables, teacher_vars, raw), source, spec, batch_size, mesh)
  count = max(totals.pop("count"), 1.0)
  result = {"top1": 100.0 * totals.pop("top1") / count, "top5": 100.0 * totals.pop("top5") / count,
            "loss": totals.pop("loss") / count}
  result.update({k: (v / count if k.startswith("kl/") else 100.0 * v / count) for k, v in totals.items()})
  return result
