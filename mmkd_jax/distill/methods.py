"""How the teachers are combined: every method behind one small interface.

A method provides
  * ``init(rng, batch) -> (params, model_state, meta_params)``;
  * ``train_objective(params, model_state, meta_params, batch) -> (loss, (model_state, terms))``,
    ``terms`` holding the named loss terms (``loss_*``), the student ``logits`` and, where it
    has them, per-sample teacher weights (``logits_weights``, ``feature_weights``);
  * ``bilevel``: whether ``meta_params`` are learned by the hypergradient of
    ``outer_objective`` through ``lookahead_objectives`` (see ``mmkd_jax.bilevel``);
  * ``needs_teachers``.
The trainer knows nothing else about methods. New methods register a factory here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections

from mmkd_jax.distill import losses
from mmkd_jax.distill.mmkd import MMKD

PyTree = Any


@dataclasses.dataclass(frozen=True)
class CrossEntropyOnly:
  """No distillation: the student (or a teacher being trained) on labels alone."""
  student: nn.Module
  bilevel: bool = False
  needs_teachers: bool = False

  def init(self, rng: jax.Array, batch: dict[str, Any]):
    v = self.student.init(rng, batch["image"], train=False)
    return {"student": v["params"]}, {"student": v.get("batch_stats", {})}, {}

  def train_objective(self, params, state, meta_params, batch):
    del meta_params
    (_, logits), updated = self.student.apply(
        {"params": params["student"], "batch_stats": state["student"]}, batch["image"], train=True,
        mutable=["batch_stats"])
    loss = losses.cross_entropy(logits, batch["label"])
    return loss, ({"student": updated["batch_stats"]}, {"logits": logits, "loss_cls": loss})


@dataclasses.dataclass(frozen=True)
class TeacherInfo:
  num_teachers: int
  channels: Sequence[int]                    # channels of each teacher's feature map
  feature_shapes: Sequence[tuple[int, ...]] = ()  # (H, W, C) of each teacher's feature map
  teachers: Sequence[Any] = ()               # the loaded teachers (for methods that use their heads)


def _mmkd_variant(weighting: str, beta_override: float | None = None):
  def build(config: ml_collections.ConfigDict, student: nn.Module, feature_index: int,
            teachers: TeacherInfo, bn_axis_name: str | None = None) -> MMKD:
    kd = config.kd
    return MMKD(student, teachers.num_teachers, tuple(teachers.channels), feature_index,
                temperature=kd.temperature, alpha=kd.alpha,
                beta=kd.beta if beta_override is None else beta_override,
                deep_aligner=kd.deep_aligner, bn_axis_name=bn_axis_name, weighting=weighting,
                warmup_epochs=config.meta.warmup_epochs)
  return build


def _ce(config, student, feature_index, teachers, bn_axis_name=None):
  del config, feature_index, teachers, bn_axis_name
  return CrossEntropyOnly(student)


# name -> factory(config, student, feature_index, teacher_info, bn_axis_name)
METHODS: dict[str, Callable[..., Any]] = {
    "none": _ce,
    "mmkd": _mmkd_variant("meta"),
    "aver": _mmkd_variant("uniform", beta_override=0.0),
}


def get_method(config: ml_collections.ConfigDict, student: nn.Module, feature_index: int,
               teachers: TeacherInfo | None, bn_axis_name: str | None = None):
  if config.method not in METHODS:
    raise ValueError(f"Unknown method {config.method!r}. Known methods: {', '.join(METHODS)}.")
  return METHODS[config.method](config, student, feature_index, teachers, bn_axis_name)
