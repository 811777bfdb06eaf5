"""How the teachers are combined: every method behind one small interface.

A method provides
  * ``init(rng, batch) -> (params, model_state, meta_params)``;
  * ``train_objective(params, model_state, meta_params, batch) -> (loss, (model_state, terms))``,
    ``terms`` holding the named loss terms (``loss_*``), the student ``logits`` and, where it
    has them, per-sample teacher weights (``logits_weights``, ``feature_weights``);
  * ``bilevel``: whether ``meta_params`` are learned by the hypergradient of
    ``outer_objective`` through ``lookahead_objectives`` (see ``mmkd_jax.bilevel``);
  * ``needs_teachers``.
The trainer knows nothing else about methods. A new method is one module in ``distill/`` plus
a factory line here and a config in ``configs/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmkd_jax.distill import losses
from mmkd_jax.distill.amtml import AMTMLKD
from mmkd_jax.distill.bomd import BOMD
from mmkd_jax.distill.camkd import CAMKD
from mmkd_jax.distill.fitnet import FitNetMKD
from mmkd_jax.distill.logit_weighting import AEKD, EBKD, SingleTeacherKD
from mmkd_jax.distill.mmkd import MMKD
from mmkd_jax.models import CLASSIFIER_NAME

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

  @classmethod
  def of(cls, teachers: Sequence[Any], feature_shapes: Sequence[tuple[int, ...]]) -> "TeacherInfo":
    """From the loaded teachers and their feature maps' (H, W, C) (``teachers.feature_shapes``)."""
    shapes = tuple(tuple(s) for s in feature_shapes)
    return cls(len(teachers), tuple(s[-1] for s in shapes), shapes, tuple(teachers))


def _mmkd_variant(weighting: str, beta_override: float | None = None):
  def build(config, student, feature_index, teachers, bn_groups=1) -> MMKD:
    kd = config.kd
    return MMKD(student, teachers.num_teachers, tuple(teachers.channels), feature_index,
                temperature=kd.temperature, alpha=kd.alpha,
                beta=kd.beta if beta_override is None else beta_override,
                deep_aligner=kd.deep_aligner, bn_groups=bn_groups, weighting=weighting,
                warmup_epochs=config.meta.warmup_epochs,
                gram_groups=bn_groups if config.meta.gram_per_device else 1)
  return build


def _ce(config, student, feature_index, teachers, bn_groups=1):
  del config, feature_index, teachers, bn_groups
  return CrossEntropyOnly(student)


def _joint(cls, **extra):
  """Factory for the JointMethod subclasses: common KD fields from config.kd, plus ``extra``."""
  def build(config, student, feature_index, teachers, bn_groups=1):
    del bn_groups
    kwargs = {k: (v(config, teachers) if callable(v) else v) for k, v in extra.items()}
    return cls(student, teachers.num_teachers, feature_index, config.kd.temperature, config.kd.alpha,
               config.kd.beta, **kwargs)
  return build


def _teacher_heads(config, teachers):
  del config
  return tuple((np.asarray(t.variables["params"][CLASSIFIER_NAME[t.arch]]["kernel"]),
                np.asarray(t.variables["params"][CLASSIFIER_NAME[t.arch]]["bias"])) for t in teachers.teachers)


def _amtml(config, student, feature_index, teachers, bn_groups=1):
  del bn_groups
  a = config.amtml
  return AMTMLKD(student, teachers.num_teachers, feature_index, a.temperature, a.alpha, 0.0,
                 teacher_channels=tuple(teachers.channels), hint_weight=a.hint_weight,
                 angle_weight=a.angle_weight, adapter_epochs=a.adapter_epochs, kd_reduction=a.kd_reduction)


def _bomd(config, student, feature_index, teachers, bn_groups=1):
  del bn_groups
  return BOMD(student, teachers.num_teachers, tuple(teachers.channels), feature_index,
              config.kd.temperature, config.kd.alpha, config.kd.beta)


# name -> factory(config, student, feature_index, teacher_info, bn_groups)
METHODS: dict[str, Callable[..., Any]] = {
    "none": _ce,
    "kd": _joint(SingleTeacherKD, teacher_index=lambda c, t: c.kd.teacher_index),
    "aver": _mmkd_variant("uniform", beta_override=0.0),
    "ebkd": _joint(EBKD),
    "camkd": _joint(CAMKD, teacher_shapes=lambda c, t: tuple(tuple(s) for s in t.feature_shapes),
                    teacher_heads=_teacher_heads),
    "aekd": _joint(AEKD, c=lambda c, t: c.aekd.c, normalize_gradients=lambda c, t: c.aekd.normalize),
    "fitnet": _joint(FitNetMKD, teacher_shapes=lambda c, t: tuple(tuple(s) for s in t.feature_shapes)),
    "amtml": _amtml,
    "bomd": _bomd,
    "mmkd": _mmkd_variant("meta"),
}


def get_method(config: ml_collections.ConfigDict, student: nn.Module, feature_index: int,
               teachers: TeacherInfo | None, bn_groups: int = 1):
  if config.method not in METHODS:
    raise ValueError(f"Unknown method {config.method!r}. Known methods: {', '.join(METHODS)}.")
  return METHODS[config.method](config, student, feature_index, teachers, bn_groups)
