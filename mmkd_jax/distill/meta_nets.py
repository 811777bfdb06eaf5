"""MMKD's meta-weight networks: per-sample softmax weights over teachers.

Both are ``Linear(D -> D // 2) - ReLU - Linear(-> T) - softmax`` with PyTorch's default
initialisation, named ``layer`` and ``all_act`` as in the reference. The student's inputs
are detached (``stop_gradient``), as in the reference.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmkd_jax.distill.losses import gram
from mmkd_jax.models.layers import dense

Array = jax.Array


@jax.custom_jvp
def softmax(x: Array) -> Array:
  """Softmax over the last axis whose derivatives of every order are cancellation-free.

  ``jax.nn.softmax`` is differentiated through exp/sum/div here; its second derivative then
  sums O(1) terms that cancel only up to rounding, which leaves ~1e-16 noise where a saturated
  (one-hot) weight's true hypergradient is ~1e-40. The rule ``y * (dx - sum(y * dx))`` gives
  exact zeros instead, as PyTorch's fused softmax backward does.
  """
  unnormalized = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
  return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  y = softmax(x)
  return y, y * (dx - jnp.sum(y * dx, axis=-1, keepdims=True))


class WeightMLP(nn.Module):
  num_teachers: int
  hidden_divisor: int = 2

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    h = nn.relu(dense(width // self.hidden_divisor, width, name="layer")(x))
    return softmax(dense(self.num_teachers, width // self.hidden_divisor, name="all_act")(h))


def _maybe_detach(x: Array, detach: bool) -> Array:
  return jax.lax.stop_gradient(x) if detach else x


def logits_weight_input(teacher_logits: Array, student_logits: Array,
                        detach_student: bool = True) -> Array:
  """``concat([z_t0, ..., z_t(T-1), sg(z_s)], axis=1)`` from (B, T, C) teacher logits: (B, C (T+1))."""
  b = teacher_logits.shape[0]
  return jnp.concatenate([teacher_logits.reshape(b, -1).astype(student_logits.dtype),
                          _maybe_detach(student_logits, detach_student)], axis=-1)


FEATURE_INPUTS = ("raw", "cosine")


def _grouped_gram(feature_map: Array, groups: int, normalize: bool = False) -> Array:
  """Rows of the Gram matrix within each of ``groups`` consecutive groups: (B, B / groups);
  ``normalize``: of the unit-normalised flattened maps (cosine similarities, in [-1, 1])."""
  b = feature_map.shape[0]
  flat = feature_map.reshape(b, -1)
  if normalize:
    flat = flat * jax.lax.rsqrt(jnp.sum(jnp.square(flat), axis=-1, keepdims=True) + 1e-12)
  if groups == 1:
    return gram(flat)
  flat = flat.reshape(groups, b // groups, -1)
  return jnp.einsum("gid,gjd->gij", flat, flat).reshape(b, b // groups)


def feature_weight_input(teacher_feats: Sequence[Array], student_feat: Array,
                         detach_student: bool = True, groups: int = 1, mode: str = "raw") -> Array:
  """``concat([G_t0, ..., G_s], axis=1)`` of batch Gram matrices ``F F^T``: (B, B (T+1)).

  ``mode='raw'`` is the reference's (entries ~1e3-1e4 on CIFAR nets: its softmax saturates);
  ``'cosine'`` normalises each sample's map first, so entries are cosine similarities.
  ``groups > 1`` uses each device's (group's) own Gram matrix: (B, B / groups * (T+1)).
  """
  if mode not in FEATURE_INPUTS:
    raise ValueError(f"feature weight input {mode!r} is not one of {FEATURE_INPUTS}")
  maps = list(teacher_feats) + [_maybe_detach(student_feat, detach_student)]
  return jnp.concatenate([_grouped_gram(m.astype(student_feat.dtype), groups, mode == "cosine")
                          for m in maps], axis=-1)
