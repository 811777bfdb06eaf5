"""Every method through the one interface: learned parts get gradients, loss weights mean the same, faithful switches, adapter init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmkd_jax.distill import hypergradient as bilevel
from mmkd_jax.training import optim
from mmkd_jax import config as config_lib
from mmkd_jax.methods import METHODS, TeacherWeights

from helpers import lookahead_of, method_and_batch

B, C = 16, 10


def _terms(method, batch, epoch=1):
  params, state, meta = method.init(jax.random.key(0), batch)
  loss, (_, aux) = method.train_objective(params, state, meta, dict(batch, epoch=jnp.asarray(epoch)))
  return float(loss), {k: float(v) for k, v in aux["terms"].items()}


@pytest.mark.parametrize("name", [m for m in METHODS if m != "none"])
def test_every_method_trains_and_its_learned_parts_get_gradients(name):
  method, batch = method_and_batch(name)
  params, state, meta = method.init(jax.random.key(0), batch)
  (loss, (new_state, terms)), grads = jax.value_and_grad(method.train_objective, has_aux=True)(
      params, state, meta, batch)
  assert np.isfinite(float(loss))
  assert set(terms["terms"]) <= set(METHODS.get(name).terms)
  assert terms["logits"].shape == (B, C)
  assert isinstance(terms["teacher_weights"], TeacherWeights) and terms["teacher_weights"].logits is not None
  for kind, weights in terms["teacher_weights"].items():
    assert weights.shape == (B, 3), kind
  for part, tree in grads.items():
    norm = float(optax.tree.norm(tree))
    assert np.isfinite(norm) and norm > 0, (name, part, norm)
  if METHODS.get(name).bilevel:
    opt = optim.torch_sgd(0.05)
    _, hypergrad, _ = bilevel.hypergradient(opt, lookahead_of(method), method.outer_objective,
                                            params, opt.init(params), state, meta, batch)
    norm = float(optax.tree.norm(hypergrad))
    assert np.isfinite(norm) and norm > 0


@pytest.mark.parametrize("name", ["kd", "aver", "ebkd", "aekd"])
def test_loss_weights_mean_the_same_for_every_method(name):
  """weights.ce / weights.kd scale the raw terms (RepDistiller's gamma 0.1 / alpha 0.9 recipe);
  AVER ignored alpha before, and single-teacher KD had no CE weight."""
  method, batch = method_and_batch(name, **{"weights.ce": 0.1, "weights.kd": 0.9})
  loss, t = _terms(method, batch)
  np.testing.assert_allclose(loss, 0.1 * t["ce"] + 0.9 * t["kd"], rtol=1e-6)


def test_faithful_turns_on_every_original_switch():
  from mmkd_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from helpers import DIGITS  # pylint: disable=import-outside-toplevel
  c = config_lib.resolve(config_lib.load(DIGITS, overrides={"faithful": True}))
  assert (c.meta.hypergradient, c.meta.rollback_bn, c.fitnet.hint_gradient) == ("original", "replay", False)
  plain = config_lib.resolve(config_lib.load(DIGITS, overrides={"method": "fitnet"}))
  assert (plain.meta.hypergradient, plain.meta.rollback_bn, plain.fitnet.hint_gradient) == (
      "forward_over_reverse", "exact", True)
  faithful = config_lib.resolve(config_lib.load(DIGITS, overrides={"method": "fitnet", "faithful": True}))
  assert faithful.fitnet.hint_gradient is False


@pytest.mark.parametrize("name,module", [("mmkd", "match"), ("camkd", "match"), ("fitnet", "match")])
def test_adapter_init_torch_is_pytorchs_default_conv_init(name, module):
  """config.adapter_init='torch' (faithful): every aligner / embedding / regressor conv starts
  from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, as PyTorch leaves an nn.Conv2d;
  the default is kaiming-normal (fan_out) with zero bias."""
  for init in ("kaiming", "torch"):
    method, batch = method_and_batch(name, adapter_init=init)
    params, _, _ = method.init(jax.random.key(0), batch)
    leaves = {tuple(str(getattr(k, "key", k)) for k in path): np.asarray(v)
              for path, v in jax.tree_util.tree_flatten_with_path(params[module])[0]}
    kernels = [v for path, v in leaves.items() if path[-1] == "kernel"]
    biases = [v for path, v in leaves.items() if path[-1] == "bias" and path[:-1] + ("kernel",) in leaves]
    assert kernels and len(biases) == len(kernels)
    for kernel in kernels:
      kh, kw, cin, cout = kernel.shape
      if init == "torch":
        bound = 1 / np.sqrt(cin * kh * kw)
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
      else:
        assert kernel.std() == pytest.approx(np.sqrt(2 / (cout * kh * kw)), rel=0.15)
    nonzero = [float(np.abs(b).max()) > 0 for b in biases]
    assert all(nonzero) if init == "torch" else not any(nonzero)


def test_faithful_sets_every_switch_of_the_original():
  c = config_lib.resolve(config_lib.set_fields(config_lib.base_config(), {"method": "amtml", "faithful": True}))
  assert (c.adapter_init, c.cache_dtype, c.weights.dist, c.meta.hypergradient) == ("torch", "float32", 1.0, "original")
  c = config_lib.resolve(config_lib.set_fields(config_lib.base_config(), {"method": "mmkd"}))
  assert (c.adapter_init, c.cache_dtype) == ("kaiming", "bfloat16")


@pytest.mark.parametrize("name", ["aver", "mmkd"])
def test_label_smoothing_changes_only_the_ce_term_and_a_replica_may_have_its_own(name):
  """The training (and look-ahead) ce term is torch's smoothed cross-entropy; the others and the
  bi-level outer objective (hard labels) are unchanged; with_values takes a traced smoothing."""
  from mmkd_jax.distill import losses  # pylint: disable=import-outside-toplevel
  plain, batch = method_and_batch(name)
  smoothed, _ = method_and_batch(name, label_smoothing=0.2)
  params, state, meta = plain.init(jax.random.key(0), batch)
  _, (_, hard) = plain.train_objective(params, state, meta, batch)
  _, (_, soft) = smoothed.train_objective(params, state, meta, batch)
  expected = losses.smooth_labels(hard["terms"]["ce"], hard["logits"], 0.2)
  np.testing.assert_allclose(soft["terms"]["ce"], expected, rtol=1e-6)
  assert abs(float(soft["terms"]["ce"]) - float(hard["terms"]["ce"])) > 1e-3
  for term in set(hard["terms"]) - {"ce"}:
    np.testing.assert_array_equal(soft["terms"][term], hard["terms"][term])
  traced = jax.jit(lambda e: plain.with_values({"label_smoothing": e}).train_objective(params, state, meta, batch))
  np.testing.assert_allclose(traced(jnp.float32(0.2))[1][1]["terms"]["ce"], expected, rtol=1e-6)
  if METHODS.get(name).bilevel:
    lookahead = lookahead_of(smoothed)[0](params, state, meta, batch)[1][1]["terms"]["ce"]
    np.testing.assert_allclose(lookahead, expected, rtol=1e-6)
    outer = [m.outer_objective(params, state, meta, batch)[0] for m in (plain, smoothed)]
    np.testing.assert_array_equal(*outer)
