"""The jitted steps: the NaN guard over the method's declared terms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from helpers import steps_and_state


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_nan_guard_tracks_the_terms_the_method_declares():
  steps, state, raw = steps_and_state("camkd")
  assert steps.tracked[:4] == ("loss_ce", "loss_kd", "loss_feat", "loss")
  raw = dict(raw, teacher_feat=tuple(np.full_like(f, np.nan) if i == 1 else f for i, f in enumerate(raw["teacher_feat"])))
  new, _ = jax.jit(steps.train_step)(state, raw, (), jnp.asarray(3, jnp.int32))
  message = steps.nonfinite_message(np.asarray(new.nonfinite), 10)
  assert "'loss_feat' became NaN/inf at step 0" in message
