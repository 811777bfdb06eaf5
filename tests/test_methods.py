"""Every teacher-combination method: hand-computed cases, limits, learned parts' gradients."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmkd_jax import bilevel, optim
from mmkd_jax import config as config_lib
from mmkd_jax.methods import METHODS, amtml, bomd
from mmkd_jax.methods import aekd
from mmkd_jax.methods.camkd import confidence_weights
from mmkd_jax.methods.ebkd import ebkd_weights, entropy

from helpers import method_and_batch

B, C = 16, 10


def _setup(name: str, feature_layer: int | None = None, **overrides):
  return method_and_batch(name, B, C, feature_layer, **overrides)


@pytest.mark.parametrize("name", [m for m in METHODS if m != "none"])
def test_every_method_trains_and_its_learned_parts_get_gradients(name):
  method, batch = _setup(name)
  params, state, meta = method.init(jax.random.key(0), batch)
  (loss, (new_state, terms)), grads = jax.value_and_grad(method.train_objective, has_aux=True)(
      params, state, meta, batch)
  assert np.isfinite(float(loss))
  assert set(terms["terms"]) <= set(method.terms)
  assert terms["logits"].shape == (B, C)
  for key in ("logits_weights", "feature_weights"):
    if key in terms and terms[key] is not None:
      assert terms[key].shape == (B, 3)
  for part, tree in grads.items():
    norm = float(optax.tree.norm(tree))
    assert np.isfinite(norm) and norm > 0, (name, part, norm)
  if method.bilevel:
    opt = optim.torch_sgd(0.05)
    _, hypergrad, _ = bilevel.hypergradient(opt, method.lookahead_objectives(), method.outer_objective,
                                            params, opt.init(params), state, meta, batch)
    norm = float(optax.tree.norm(hypergrad))
    assert np.isfinite(norm) and norm > 0


def test_single_teacher_kd_is_hinton_kd_from_that_teacher():
  method, batch = _setup("kd", **{"kd.teacher_index": 1})
  params, state, meta = method.init(jax.random.key(0), batch)
  _, (_, terms) = method.train_objective(params, state, meta, batch)
  z_s, z_t = np.asarray(terms["logits"], np.float64) / 4, np.asarray(batch["teacher_logits"][:, 1], np.float64) / 4
  log_p = lambda z: z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True)) - z.max(-1, keepdims=True)
  expected = 16 * np.mean(np.sum(np.exp(log_p(z_t)) * (log_p(z_t) - log_p(z_s)), -1))
  np.testing.assert_allclose(terms["terms"]["kd"], expected, rtol=1e-5)
  np.testing.assert_array_equal(terms["logits_weights"][:, 1], 1.0)


def test_ebkd_weights_by_hand():
  # Teacher 0 is confident (low entropy), teacher 1 uniform (entropy log 3).
  z = jnp.array([[[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
  h = np.asarray(entropy(z))[0]
  w = np.asarray(ebkd_weights(z))[0]
  np.testing.assert_allclose(h[1], np.log(3), rtol=1e-6)
  np.testing.assert_allclose(w, 1 - h / h.sum(), rtol=1e-6)
  assert w[0] > w[1]
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)  # T - 1 = 1 for two teachers
  # Three teachers: rows sum to T - 1 = 2; underflowing probabilities give no NaN.
  z3 = jnp.array([[[1e4, 0.0], [0.0, 0.0], [3.0, 1.0]]])
  w3 = np.asarray(ebkd_weights(z3))
  assert np.all(np.isfinite(w3)) and np.isclose(w3.sum(), 2.0)


def test_camkd_confidence_weights_by_hand():
  ce = jnp.array([[0.1, 2.0, 5.0]])
  s = np.exp([0.1, 2.0, 5.0]) / np.exp([0.1, 2.0, 5.0]).sum()
  np.testing.assert_allclose(confidence_weights(ce)[0], (1 - s) / 2, rtol=1e-6)
  np.testing.assert_allclose(float(jnp.sum(confidence_weights(ce))), 1.0, rtol=1e-6)
  assert float(confidence_weights(ce)[0, 0]) > float(confidence_weights(ce)[0, 2])
  # Equal confidence -> equal weights.
  np.testing.assert_allclose(confidence_weights(jnp.ones((1, 4))), 0.25, rtol=1e-6)


def _brute_force_min_norm(gram: np.ndarray, cap: float, step: float = 2e-3) -> float:
  best = np.inf
  grid = np.arange(0, 1 + step / 2, step)
  for a, b in itertools.product(grid, grid):
    c = 1 - a - b
    lam = np.array([a, b, c])
    if c < -1e-12 or np.any(lam > cap + 1e-12):
      continue
    best = min(best, lam @ gram @ lam)
  return best


@pytest.mark.parametrize("seed", range(4))
def test_aekd_min_norm_matches_brute_force(seed):
  g = np.random.default_rng(seed).standard_normal((3, 5))
  gram = g @ g.T
  for cap in (1.0, 0.6, 0.4):
    lam = aekd.min_norm_weights(gram, cap)
    assert np.isclose(lam.sum(), 1.0, atol=1e-12) and lam.min() >= 0 and lam.max() <= cap + 1e-12
    assert lam @ gram @ lam <= _brute_force_min_norm(gram, cap) + 1e-12


def _slsqp(gram, cap):
  from scipy import optimize  # pylint: disable=import-outside-toplevel
  t, g = gram.shape[0], gram / np.trace(gram)
  result = optimize.minimize(lambda x: x @ g @ x, np.full(t, 1 / t), jac=lambda x: 2 * g @ x, method="SLSQP",
                             bounds=[(0, cap)] * t, options={"ftol": 1e-16, "maxiter": 1000},
                             constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1, "jac": lambda x: np.ones(t)}])
  return result.x


@pytest.mark.parametrize("spread", [1e-1, 1e-2, 1e-3])
@pytest.mark.parametrize("teachers", [3, 5, 10])
def test_aekd_weights_match_an_independent_solver_on_ill_conditioned_grams(spread, teachers):
  """Near-identical teachers (condition numbers up to ~1e7): the *weights* agree with scipy's
  SLSQP to 1e-4 (the old fixed 300 projected-gradient steps were off by up to 0.66 here), at
  any scale of the Gram matrix, and the duality gap is zero."""
  rng = np.random.default_rng(teachers)
  for _ in range(3):
    g = rng.standard_normal(100) + spread * rng.standard_normal((teachers, 100))
    for cap in (1.0, 0.6 if teachers == 3 else 0.3):
      for scale in (1.0, 1e-10):  # the digits run's Gram traces are ~1e-7 .. 1e-5
        lam = aekd.min_norm_weights(scale * g @ g.T, cap)
        np.testing.assert_allclose(lam, _slsqp(g @ g.T, cap), atol=1e-4)
        assert aekd.duality_gap(g @ g.T / np.trace(g @ g.T), lam, cap) <= 1e-9


def test_aekd_limits():
  # Orthogonal gradients of equal norm: the min-norm point is the centre.
  np.testing.assert_allclose(aekd.min_norm_weights(np.eye(3), 0.6), [1 / 3] * 3, atol=1e-12)
  # A teacher whose KD gradient is already zero takes all the weight it may (the cap).
  lam = aekd.min_norm_weights(np.diag([0.0, 1.0, 4.0]), 0.6)
  np.testing.assert_allclose(lam, [0.6, 0.32, 0.08], atol=1e-12)  # rest split inversely to squared norms
  assert aekd.aekd_cap(3, 0.6) == pytest.approx(0.6)
  assert aekd.aekd_cap(3, 0.2) == pytest.approx(1 / 3)  # nu clipped to 1: forced equal weights
  assert aekd.aekd_cap(3, 1.0) == pytest.approx(1.0)
  # Inside a jitted step: the host callback gives the same weights.
  np.testing.assert_allclose(jax.jit(lambda g: aekd.device_min_norm_weights(g, 0.6))(jnp.diag(jnp.array([0.0, 1.0, 4.0]))),
                             [0.6, 0.32, 0.08], atol=1e-6)


def test_capped_simplex_projection_is_the_projection():
  rng = np.random.default_rng(1)
  for _ in range(20):
    v = rng.standard_normal(5) * 2
    p = aekd.capped_simplex_projection(v, 0.5)
    assert np.isclose(p.sum(), 1.0, atol=1e-12) and p.min() >= 0 and p.max() <= 0.5 + 1e-12
    for _ in range(20):  # variational inequality: (v - p) . (y - p) <= 0 for feasible y
      y = aekd.capped_simplex_projection(rng.standard_normal(5), 0.5)
      assert (v - p) @ (y - p) <= 1e-9


def test_fitnet_hint_trains_regressors_and_student():
  method, batch = _setup("fitnet")
  params, state, meta = method.init(jax.random.key(0), batch)

  def hint_only(p):
    _, (_, terms) = method.train_objective(p, state, meta, batch)
    return terms["terms"]["feat"]

  grads = jax.grad(hint_only)(params)
  assert float(optax.tree.norm(grads["match"])) > 0
  assert float(optax.tree.norm(grads["student"])) > 0  # the reference's graph cut gave 0 here


def test_amtml_weights_target_and_phases():
  method, batch = _setup("amtml")
  params, state, meta = method.init(jax.random.key(0), batch)
  _, (_, terms) = method.train_objective(params, state, meta, batch)
  np.testing.assert_allclose(np.sum(terms["logits_weights"], -1), 1.0, rtol=1e-5)

  def div(p, epoch):
    _, (_, t) = method.train_objective(p, state, meta, dict(batch, epoch=jnp.asarray(epoch)))
    return t["terms"]["kd"]

  during = jax.grad(div)(params, 0)["adapter"]
  after = jax.grad(div)(params, 10_000)["adapter"]
  assert float(optax.tree.norm(during)) > 0 and float(optax.tree.norm(after)) == 0.0
  theta = jnp.ones((2, 4))
  np.testing.assert_allclose(amtml.instance_weights(jnp.ones((1, 4)), theta, jnp.ones(4)), [[0.5, 0.5]])
  z = jax.random.normal(jax.random.key(0), (6, 5))
  assert float(amtml.rkd_angle_loss(z, z)) == pytest.approx(0.0, abs=1e-7)


def test_amtml_reductions_differ_by_the_class_count():
  m_mean, batch = _setup("amtml", **{"amtml.kd_reduction": "mean"})
  m_batch, _ = _setup("amtml", **{"amtml.kd_reduction": "batchmean"})
  params, state, meta = m_mean.init(jax.random.key(0), batch)
  a = m_mean.train_objective(params, state, meta, batch)[1][1]["terms"]["kd"]
  b = m_batch.train_objective(params, state, meta, batch)[1][1]["terms"]["kd"]
  np.testing.assert_allclose(b / a, C, rtol=1e-5)


def test_bomd_projection_stays_orthogonal_under_many_updates():
  key = jax.random.key(0)
  generator = jnp.zeros((64, 64))
  opt = optax.sgd(0.5, momentum=0.9)
  state = opt.init(generator)
  target = jax.random.normal(key, (64, 48))

  def loss(g):
    return jnp.sum(jnp.square(bomd.projection(g, 48, 64).T - target))

  for _ in range(300):
    grads = jax.grad(loss)(generator)
    updates, state = opt.update(grads, state)
    generator = optax.apply_updates(generator, updates)
  p = bomd.projection(generator, 48, 64)
  assert float(jnp.max(jnp.abs(generator))) > 0.1  # it really moved
  np.testing.assert_allclose(p @ p.T, np.eye(48), atol=1e-5)
  wide = bomd.projection(generator, 64, 48)  # student wider than teacher: orthonormal columns
  np.testing.assert_allclose(wide.T @ wide, np.eye(48), atol=1e-5)


def test_bomd_weights_are_a_distribution():
  method, batch = _setup("bomd")
  params, state, meta = method.init(jax.random.key(0), batch)
  meta = {"teacher_logits": jnp.array([1.0, 0.0, -1.0])}
  _, (_, terms) = method.train_objective(params, state, meta, batch)
  w = np.asarray(terms["logits_weights"][0])
  np.testing.assert_allclose(w, np.exp([1, 0, -1]) / np.exp([1, 0, -1]).sum(), rtol=1e-6)


def _terms(method, batch, epoch=1):
  params, state, meta = method.init(jax.random.key(0), batch)
  loss, (_, aux) = method.train_objective(params, state, meta, dict(batch, epoch=jnp.asarray(epoch)))
  return float(loss), {k: float(v) for k, v in aux["terms"].items()}


def test_camkd_drops_the_feature_term_in_the_first_epoch():
  """The reference's training loop (loops.py): L = CE + KD in epoch 1, + 50 feat afterwards."""
  method, batch = _setup("camkd")
  first, t = _terms(method, batch, epoch=0)
  later, _ = _terms(method, batch, epoch=1)
  assert t["feat"] > 0
  np.testing.assert_allclose(first, t["ce"] + t["kd"], rtol=1e-6)
  np.testing.assert_allclose(later, t["ce"] + t["kd"] + 50.0 * t["feat"], rtol=1e-6)
  always, _ = _setup("camkd", **{"weights.feat_from_epoch": 0})
  np.testing.assert_allclose(_terms(always, batch, epoch=0)[0], later, rtol=1e-6)


@pytest.mark.parametrize("name", ["kd", "aver", "ebkd", "aekd"])
def test_loss_weights_mean_the_same_for_every_method(name):
  """weights.ce / weights.kd scale the raw terms (RepDistiller's gamma 0.1 / alpha 0.9 recipe);
  AVER ignored alpha before, and single-teacher KD had no CE weight."""
  method, batch = _setup(name, **{"weights.ce": 0.1, "weights.kd": 0.9})
  loss, t = _terms(method, batch)
  np.testing.assert_allclose(loss, 0.1 * t["ce"] + 0.9 * t["kd"], rtol=1e-6)


def test_fitnet_hint_gradient_false_is_the_originals_graph_cut():
  method, batch = _setup("fitnet", **{"fitnet.hint_gradient": False})
  params, state, meta = method.init(jax.random.key(0), batch)

  def hint_only(p):
    _, (_, terms) = method.train_objective(p, state, meta, batch)
    return terms["terms"]["feat"]

  assert float(hint_only(params)) > 0  # logged as the original logs it
  grads = jax.grad(hint_only)(params)
  assert float(optax.tree.norm(grads)) == 0.0


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


def test_cosine_feature_input_does_not_saturate():
  """Raw Gram entries of post-ReLU maps are large, so the feature-weight softmax starts one-hot
  (its hypergradient ~1e-40); cosine-normalised Grams are in [-1, 1]."""
  from mmkd_jax.distill.meta_nets import feature_weight_input  # pylint: disable=import-outside-toplevel
  fractions = {}
  for mode in ("raw", "cosine"):
    method, batch = _setup("mmkd", **{"mmkd.feature_input": mode})
    batch = dict(batch, teacher_feat=tuple(20 * f for f in batch["teacher_feat"]))  # CIFAR-scale maps
    params, state, meta = method.init(jax.random.key(0), batch)
    _, (_, aux) = method.train_objective(params, state, meta, batch)
    fractions[mode] = float(aux["diagnostics"]["feature_weights_onehot"])
  assert fractions["raw"] > 0.9 and fractions["cosine"] == 0.0
  x = feature_weight_input(batch["teacher_feat"], batch["teacher_feat"][0], mode="cosine")
  assert float(jnp.max(jnp.abs(x))) <= 1.0 + 1e-6


def _rkd_distance_reference(student: np.ndarray, target: np.ndarray) -> float:
  """RKD's distance loss written out with loops, in float64."""
  def normalised(e):
    n = len(e)
    d = np.array([[0.0 if i == j else np.sqrt(max(np.sum((e[i] - e[j]) ** 2), 1e-12)) for j in range(n)]
                  for i in range(n)])
    return d / d[d > 0].mean()
  diff = np.abs(normalised(student) - normalised(target))
  return float(np.mean(np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5)))


def test_rkd_distance_loss_and_the_faithful_amtml_term():
  """amtml.rkd_distance_loss equals the loop-written RKD distance; AMTML-KD adds it (weight 1)
  only under config.faithful, the original code's objective."""
  rng = np.random.default_rng(3)
  z, p = rng.normal(size=(6, 5)), rng.dirichlet(np.ones(5), size=6)
  np.testing.assert_allclose(float(amtml.rkd_distance_loss(jnp.asarray(z, jnp.float32), jnp.asarray(p, jnp.float32))),
                             _rkd_distance_reference(z, p), rtol=1e-5)
  assert float(amtml.rkd_distance_loss(jnp.asarray(z), jnp.asarray(2 * z))) == pytest.approx(0.0, abs=1e-6)
  plain, batch = _setup("amtml")
  faithful, _ = _setup("amtml", faithful=True)
  assert plain.weights["dist"] == 0.0 and faithful.weights["dist"] == 1.0
  params, state, meta = plain.init(jax.random.key(0), batch)
  loss_plain, (_, aux_plain) = plain.train_objective(params, state, meta, batch)
  loss_faithful, (_, aux) = faithful.train_objective(params, state, meta, batch)
  assert "dist" not in aux_plain["terms"] and float(aux["terms"]["dist"]) > 0
  np.testing.assert_allclose(float(loss_faithful) - float(loss_plain), float(aux["terms"]["dist"]), rtol=1e-4)


@pytest.mark.parametrize("name,module", [("mmkd", "match"), ("camkd", "match"), ("fitnet", "match")])
def test_adapter_init_torch_is_pytorchs_default_conv_init(name, module):
  """config.adapter_init='torch' (faithful): every aligner / embedding / regressor conv starts
  from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, as PyTorch leaves an nn.Conv2d;
  the default is kaiming-normal (fan_out) with zero bias."""
  for init in ("kaiming", "torch"):
    method, batch = _setup(name, adapter_init=init)
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
