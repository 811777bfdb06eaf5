"""bfloat16 compute (models/precision.py): what runs in bfloat16 and what stays float32."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax import config as config_lib
from mmkd_jax.methods import bilevel as bilevel_methods
from mmkd_jax.models import get_model
from mmkd_jax.errors import ConfigError

from helpers import digits_smoke, steps_and_state


def _cos(a, b) -> float:
  a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def pair():
  f32, bf16 = get_model("resnet8", 10), get_model("resnet8", 10, dtype="bfloat16")
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 3)), jnp.float32)
  return f32, bf16, f32.init(jax.random.key(0), x), x


def test_initialisation_is_the_float32_one(pair):
  f32, bf16, variables, x = pair
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(bf16.init(jax.random.key(0), x))):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)


def test_convolutions_run_in_bfloat16_and_outputs_are_float32(pair):
  _, bf16, variables, x = pair
  jaxpr = str(jax.make_jaxpr(lambda v: bf16.apply(v, x, train=False))(variables))
  assert "conv_general_dilated" in jaxpr and "bf16[8,32,32,16]" in jaxpr
  feats, logits = bf16.apply(variables, x, train=False)
  assert logits.dtype == jnp.float32 and all(f.dtype == jnp.float32 for f in feats)


def test_outputs_statistics_and_gradients_stay_close_to_float32(pair):
  f32, bf16, variables, x = pair
  def loss(model, v):
    (_, logits), updated = model.apply(v, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), (logits, updated)
  (l32, (z32, s32)), g32 = jax.value_and_grad(lambda v: loss(f32, v), has_aux=True)(variables)
  (l16, (z16, s16)), g16 = jax.value_and_grad(lambda v: loss(bf16, v), has_aux=True)(variables)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((s16, g16)))
  # bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 2e-3 per op).
  assert np.max(np.abs(z16 - z32)) / np.max(np.abs(z32)) < 3e-2
  assert abs(float(l16 - l32)) < 1e-2 * abs(float(l32))
  assert np.max(np.abs(_flat(s16) - _flat(s32))) < 2e-2 * np.max(np.abs(_flat(s32)))
  assert _cos(_flat(g16), _flat(g32)) > 0.99


@pytest.mark.claim("bfloat16")
def test_a_bfloat16_training_step_keeps_the_state_float32_and_the_loss():
  """The default-suite variant of the MMKD test below: an AVER train step in bfloat16 keeps every
  state leaf float32, moves the parameters in the float32 step's direction, and keeps the loss."""
  steps32, state32, raw = steps_and_state("aver")
  steps16, state16, _ = steps_and_state("aver", dtype="bfloat16")
  epoch = jnp.asarray(0, jnp.int32)
  new16, m16 = jax.jit(steps16.train_step)(state16, raw, (), epoch)
  new32, m32 = jax.jit(steps32.train_step)(state32, raw, (), epoch)
  assert all(x.dtype in (jnp.float32, jnp.int32, jnp.uint32) for x in jax.tree.leaves(new16))
  assert abs(float(m16["loss"] - m32["loss"])) < 2e-2 * float(m32["loss"])
  moved16 = _flat(new16.params) - _flat(state16.params)
  moved32 = _flat(new32.params) - _flat(state32.params)
  assert _cos(moved16, moved32) > 0.99, _cos(moved16, moved32)


@pytest.mark.claim("bfloat16")
@pytest.mark.slow
def test_bfloat16_steps_keep_the_state_float32_and_the_hypergradient_direction():
  fast = {"mmkd.hard_buffer": False, "meta.lookahead_matching_steps": 1, "meta.hypergradient": "reverse"}
  steps32, state32, raw = steps_and_state("mmkd", **fast)
  steps16, state16, _ = steps_and_state("mmkd", dtype="bfloat16", **fast)
  epoch = jnp.asarray(0, jnp.int32)
  new16, m16 = jax.jit(steps16.train_step)(state16, raw, (), epoch)
  _, m32 = jax.jit(steps32.train_step)(state32, raw, (), epoch)
  assert all(x.dtype in (jnp.float32, jnp.int32, jnp.uint32) for x in jax.tree.leaves(new16))
  assert abs(float(m16["loss"] - m32["loss"])) < 2e-2 * float(m32["loss"])
  _, g16, _, _ = jax.jit(functools.partial(bilevel_methods.hypergradient, steps16))(state16, raw, (), epoch)
  _, g32, _, _ = jax.jit(functools.partial(bilevel_methods.hypergradient, steps32))(state32, raw, (), epoch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g16))
  cosine = _cos(_flat(g16["logits_weight"]), _flat(g32["logits_weight"]))
  assert cosine > 0.95, cosine


def test_unknown_compute_dtype_names_the_field():
  with pytest.raises(ConfigError, match=r"config.dtype: 'float16' must be one of float32, bfloat16"):
    config_lib.validate(digits_smoke(dtype="float16"))
