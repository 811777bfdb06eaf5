"""methods/bilevel.py: the meta-step schedule, the meta update's learning rate, rollback and
BatchNorm modes, the original hypergradient inside a real meta step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmkd_jax.distill import hypergradient as bilevel
from mmkd_jax.training import optim
from mmkd_jax.methods import LossWeights
from mmkd_jax.methods import bilevel as bilevel_methods

from helpers import steps_and_state


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_meta_steps_every_freq_batches_on_the_last_full_batch_and_not_in_warm_up():
  """freq 5, 10 batches of 8: after batches 0 and 5 and the last one (9), which the loader reaches
  only when the split is whole batches; none in the warm-up epoch."""
  config = ml_collections.ConfigDict({"batch_size": 8, "meta": {"freq": 5, "warmup_epochs": 1}})
  due = lambda epoch, num_train: [i for i in range(10) if bilevel_methods.Bilevel(
      config, None, 10, num_train, LossWeights(())).is_meta_step(epoch, i)]
  assert due(0, 80) == []
  assert due(1, 80) == [0, 5, 9]
  assert due(1, 78) == [0, 5]


@pytest.mark.slow  # ~100 s; meta.rollback=False is an ablation switch, off by default
def test_rollback_false_keeps_the_schedule_on_training_steps():
  """Without rollback the look-ahead's three updates must not advance the learning-rate
  schedule (it counted them: decay ~1.6x too early at meta_freq 5)."""
  steps, state, raw = steps_and_state("mmkd", **{"meta.rollback": False, "mmkd.hard_buffer": False})
  epoch = jnp.asarray(0, jnp.int32)
  state, _ = jax.jit(steps.train_step)(state, raw, (), epoch)
  moved, _ = jax.jit(steps.meta_step)(state, raw, (), epoch)
  assert int(optim.step_count(moved.opt_state)) == 1
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(moved.params), _leaves(state.params)))  # kept


@pytest.mark.slow
def test_lookahead_uses_the_learning_rate_of_the_step_just_taken():
  """A meta step after the last training step of an epoch before a milestone unrolls at that
  epoch's learning rate (the reference's), not the decayed one of the next step."""
  steps, state, raw = steps_and_state("mmkd", steps_per_epoch=1, lr_milestones=(1,), lr=0.05,
                                      **{"mmkd.hard_buffer": False, "meta.hypergradient": "reverse"})
  epoch = jnp.asarray(0, jnp.int32)
  state, _ = jax.jit(steps.train_step)(state, raw, (), epoch)  # count 1: the next step is decayed
  _, metrics = jax.jit(steps.meta_step)(state, raw, (), epoch)
  batch = dict(steps.device_batch(raw, ()), epoch=epoch)
  for lr, same in ((0.05, True), (0.005, False)):
    opt = optim.torch_sgd(lr, 0.9, True, 5e-4)
    opt_state = optim.set_momentum(opt.init(state.params), optim.momentum_of(state.opt_state))
    _, grads, _ = jax.jit(lambda: bilevel.hypergradient(
        opt, bilevel_methods.lookahead_objectives(steps.config, steps.method), steps.method.outer_objective,
        state.params, opt_state,
        state.model_state, state.meta_params, batch, mode="reverse"))()
    for net in ("logits_weight", "feature_weight") if same else ("logits_weight",):  # (the feature net is saturated)
      norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads[net]))))
      assert (norm == pytest.approx(float(metrics[f"hypergrad_norm/{net}"]), rel=1e-4)) == same, (lr, net)


@pytest.mark.parametrize("rollback_bn", ["exact", pytest.param("replay", marks=pytest.mark.slow)])
def test_rollback_restores_or_replays_batchnorm(rollback_bn):
  steps, state, raw = steps_and_state("mmkd", **{"mmkd.hard_buffer": False, "meta.rollback_bn": rollback_bn})
  epoch = jnp.asarray(0, jnp.int32)
  new, _ = jax.jit(steps.meta_step)(state, raw, (), epoch)
  same = all(np.array_equal(a, b) for a, b in zip(_leaves(new.model_state), _leaves(state.model_state)))
  assert same == (rollback_bn == "exact")
  for a, b in zip(_leaves(new.params), _leaves(state.params)):
    np.testing.assert_array_equal(a, b)  # parameters are rolled back in both modes


@pytest.mark.slow
def test_original_hypergradient_in_a_real_meta_step_differs_from_the_exact_one():
  results = {}
  for mode in ("forward_over_reverse", "original"):
    steps, state, raw = steps_and_state("mmkd", **{"mmkd.hard_buffer": False, "meta.hypergradient": mode})
    _, metrics = jax.jit(steps.meta_step)(state, raw, (), jnp.asarray(0, jnp.int32))
    results[mode] = float(metrics["hypergrad_norm/logits_weight"])
  assert all(np.isfinite(v) and v > 0 for v in results.values())
  assert results["original"] != pytest.approx(results["forward_over_reverse"], rel=1e-3)
