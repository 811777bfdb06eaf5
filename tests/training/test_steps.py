"""The jitted steps: the NaN guard over the method's declared terms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import steps_and_state


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.claim(23)
def test_nan_guard_tracks_the_terms_the_method_declares():
  steps, state, raw = steps_and_state("camkd")
  assert steps.tracked[:4] == ("loss_ce", "loss_kd", "loss_feat", "loss")
  raw = dict(raw, teacher_feat=tuple(np.full_like(f, np.nan) if i == 1 else f for i, f in enumerate(raw["teacher_feat"])))
  new, _ = jax.jit(steps.train_step)(state, raw, (), jnp.asarray(3, jnp.int32))
  message = steps.nonfinite_message(np.asarray(new.nonfinite), 10)
  assert "'loss_feat' became NaN/inf at step 0" in message


def test_steps_with_a_replicas_own_optimiser_values_equal_steps_built_with_them():
  """with_values(lr, weight_decay, warmup_epochs, label_smoothing) as traced numbers gives the
  step that a config with those values builds, to float32 rounding (measured 1.2e-7; SGD, as
  AdamW's first steps, g / (|g| + eps), magnify rounding in tiny gradients to 1e-4)."""
  from mmkd_jax.training import steps as steps_lib  # pylint: disable=import-outside-toplevel
  own = {"lr": 0.02, "weight_decay": 0.3, "warmup_epochs": 0.5, "label_smoothing": 0.1}
  setting = {"schedule": "cosine", "schedule_epochs": 2}
  base, state, raw = steps_and_state("aver", batch_size=8, **setting)
  configured, _, _ = steps_and_state("aver", batch_size=8, **setting, **own)
  epoch = jnp.asarray(0, jnp.int32)
  traced = jax.jit(lambda s, values: steps_lib.with_values(base, values).train_step(s, raw, (), epoch)[0])
  direct, via_values, plain = state, state, state
  for _ in range(3):
    direct = jax.jit(configured.train_step)(direct, raw, (), epoch)[0]
    via_values = traced(via_values, {k: jnp.float32(v) for k, v in own.items()})
    plain = jax.jit(base.train_step)(plain, raw, (), epoch)[0]
  for a, b, c in zip(_leaves(via_values.params), _leaves(direct.params), _leaves(plain.params)):
    # 1.3e-5 measured on a 2-core AMD EPYC VM (below 5e-7 on the CI machine); another lr's steps differ by > 1e-3
    np.testing.assert_allclose(a, b, rtol=0, atol=3e-5)
  assert max(float(np.max(np.abs(a - c))) for a, c in zip(_leaves(via_values.params), _leaves(plain.params))) > 1e-3
