"""MMKD's loss terms, meta nets and aligners against the PyTorch reference (losses_*.npz)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax import verify
from mmkd_jax.distill import losses
from mmkd_jax.distill.align import FeatureAligner
from mmkd_jax.distill.meta_nets import WeightMLP, feature_weight_input
from mmkd_jax.methods import LossWeights, RunInfo, TeacherView
from mmkd_jax.methods.mmkd import MMKD
from mmkd_jax.models import get_model
from mmkd_jax.teachers import convert

from helpers import method_and_batch

STUDENTS = ["vgg8", "resnet8x4"]


def _load(testvectors, student):
  with np.load(testvectors / "mmkd" / f"losses_{student}.npz") as f:
    return {k: f[k] for k in f.files}


def _recipe(npz, tag):
  keys = [str(k) for k in npz[f"{tag}/keys"]]
  stats = {k: npz[f"{tag}/bn_stats/{k}"] for k in keys if k.endswith(("running_mean", "running_var"))}
  return verify.recipe_tensors(keys, {k: npz[f"{tag}/shape/{k}"] for k in keys},
                               int(npz[f"{tag}/recipe_seed"]), stats or None)


class Case:
  """Everything one losses file defines, converted to Flax layout in ``dtype``."""

  def __init__(self, npz, dtype):
    self.npz = npz
    cast = lambda a: jnp.asarray(np.asarray(a, dtype))
    nhwc = lambda a: cast(np.asarray(a).transpose(0, 2, 3, 1))
    self.num_teachers = len([k for k in npz if k.startswith("teacher_logits_")])
    self.logits = cast(npz["student_logits"])
    self.feat = nhwc(npz["student_feat"])
    self.batch = {
        "label": jnp.asarray(npz["labels"], jnp.int32),
        "teacher_logits": jnp.stack([cast(npz[f"teacher_logits_{t}"]) for t in range(self.num_teachers)], axis=1),
        "teacher_feat": tuple(nhwc(npz[f"teacher_feat_{t}"]) for t in range(self.num_teachers)),
    }
    self.channels = tuple(int(npz[f"teacher_feat_{t}"].shape[1]) for t in range(self.num_teachers))
    self.alpha, self.beta = float(npz["config/alpha"]), float(npz["config/beta"])
    views = tuple(TeacherView(f"t{t}", "", tuple(f.shape[1:])) for t, f in enumerate(self.batch["teacher_feat"]))
    run = RunInfo(get_model(str(npz["config/student"]), 100), 100, len(npz["labels"]), teachers=views)
    self.method = MMKD(run, LossWeights((("ce", 1.0), ("kd", 1.0), ("feat", self.beta))), float(npz["config/kd_T"]))
    mlp = WeightMLP(self.num_teachers)
    lw_shape = jax.eval_shape(mlp.init, jax.random.key(0), jnp.zeros((1, 100 * (self.num_teachers + 1))))
    fw_shape = jax.eval_shape(mlp.init, jax.random.key(0), jnp.zeros((1, 8 * (self.num_teachers + 1))))
    to = lambda tree: jax.tree.map(cast, tree)
    self.meta = {
        "logits_weight": to(convert.torch_to_flax(_recipe(npz, "logits_weight"), lw_shape, dtype)["params"]),
        "feature_weight": to(convert.torch_to_flax(_recipe(npz, "feature_weight"), fw_shape, dtype)["params"]),
    }
    self.match = {}
    # MatchFeature(convs=True) in the reference passes the flag into Embed's `factor`, so it
    # still builds the single 1x1 regressor: both vector sets are for deep=False.
    for tag in ("match", "match_convs"):
      aligner = FeatureAligner(self.channels, deep=False)
      shape = jax.eval_shape(aligner.init, jax.random.key(0), self.feat, self.batch["teacher_feat"])
      self.match[tag] = (aligner, to(convert.torch_to_flax(_recipe(npz, tag), shape, dtype)))


def _check(got, ref, rtol, atol, what):
  np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(ref, np.float64), rtol=rtol,
                             atol=atol, err_msg=what)


# Gradients of the look-ahead's weights in float32, relative to each tensor's largest entry.
GRAD_SCALE_RTOL_F32 = 1e-6  # measured below 1e-7 (both students)

# float32 against the float32 reference; float64 (x64) against its f64/ keys.
PRECISIONS = [("f32", np.float32, "", 1e-4, 1e-5), ("f64", np.float64, "f64/", 1e-9, 1e-12)]


@pytest.mark.claim("parity")
@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("precision", PRECISIONS, ids=[p[0] for p in PRECISIONS])
def test_losses_weights_and_alignment(testvectors, student, precision):
  _, dtype, prefix, rtol, atol = precision
  npz = _load(testvectors, student)
  ref = lambda key: npz[prefix + key] if prefix + key in npz else None
  with jax.enable_x64(dtype == np.float64):
    c = Case(npz, dtype)
    kd = losses.kd_per_sample(c.logits[:, None], c.batch["teacher_logits"], 4.0)
    _check(kd, ref("kd/per_sample"), rtol, atol, "kd/per_sample")
    _check(losses.kd_batchmean(c.logits[None], jnp.swapaxes(c.batch["teacher_logits"], 0, 1), 4.0), ref("kd/batchmean"),
           rtol, atol, "kd/batchmean")
    w_l, _ = c.method.teacher_weights(c.meta, c.batch, c.logits, c.feat)
    _check(w_l, ref("logits_weights"), rtol, atol, "logits_weights")

    gram_input = feature_weight_input(c.batch["teacher_feat"], c.feat)
    loose = (1e-5, 1e-2) if dtype == np.float32 else (rtol, atol)
    _check(gram_input, ref("feature_weight_input"), *loose, "feature_weight_input")
    params = c.meta["feature_weight"]
    hidden = jax.nn.relu(gram_input @ params["layer"]["kernel"] + params["layer"]["bias"])
    preact = hidden @ params["all_act"]["kernel"] + params["all_act"]["bias"]
    _check(preact, ref("feature_weight_preactivation"), *loose, "feature_weight_preactivation")
    _, w_f = c.method.teacher_weights(c.meta, c.batch, c.logits, c.feat)
    _check(w_f, ref("feature_weights"), rtol, atol, "feature_weights")
    scale = float(npz["config/feature_scale"])
    scaled_batch = dict(c.batch, teacher_feat=tuple(f * scale for f in c.batch["teacher_feat"]))
    _, w_scaled = c.method.teacher_weights(c.meta, scaled_batch, c.logits, c.feat * scale)
    _check(w_scaled, ref("feature_weights_scaled"), rtol, atol, "feature_weights_scaled")

    weight = jnp.asarray(npz["match_weight"], dtype)
    for tag in ("match", "match_convs"):
      aligner, variables = c.match[tag]
      for mode in ("train", "eval"):
        ind, updated = aligner.apply(variables, c.feat, c.batch["teacher_feat"], train=mode == "train",
                                     mutable=["batch_stats"])
        _check(ind, ref(f"{tag}_ind_loss/{mode}"), rtol, atol, f"{tag}_ind_loss/{mode}")
        _check(losses.weighted_batch_sum(ind, weight), ref(f"{tag}_loss/{mode}"), rtol, atol,
               f"{tag}_loss/{mode}")
        if mode == "train":
          for key, value in convert.flax_to_torch(updated).items():
            if ref(f"{tag}/train_bn_stats/{key}") is not None:
              _check(value, ref(f"{tag}/train_bn_stats/{key}"), rtol, atol, f"{tag} stats {key}")


@pytest.mark.claim("parity")
@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("precision", PRECISIONS, ids=[p[0] for p in PRECISIONS])
def test_plain_step_objective_and_gradients(testvectors, student, precision):
  _, dtype, prefix, rtol, atol = precision
  npz = _load(testvectors, student)
  ref = lambda key: npz.get(prefix + key)
  with jax.enable_x64(dtype == np.float64):
    c = Case(npz, dtype)
    _, match_vars = c.match["match"]
    state = {"match": match_vars["batch_stats"]}

    def objectives(logits, feat, match_params, meta):
      t, _, _ = c.method.terms_from_outputs(logits, feat, {"match": match_params}, state, meta, c.batch)
      t = {"loss_cls": t["ce"], "loss_div": t["kd"], "loss_feat": t["feat"]}
      plain = c.method.weights.total({"ce": t["loss_cls"], "kd": t["loss_div"], "feat": t["loss_feat"]})
      return plain, (t, c.alpha * t["loss_div"] + c.beta * t["loss_feat"])

    grads, (terms, matching) = jax.grad(objectives, argnums=(0, 1, 2, 3), has_aux=True)(
        c.logits, c.feat, match_vars["params"], c.meta)
    plain, _ = objectives(c.logits, c.feat, match_vars["params"], c.meta)
    for name in ("loss_cls", "loss_div", "loss_feat"):
      _check(terms[name], ref(f"total/{name}"), rtol, atol, name)
    _check(plain, ref("total/plain_loss"), rtol, atol, "plain_loss")
    _check(matching, ref("total/matching_only_loss"), rtol, atol, "matching_only_loss")
    _check(grads[0], ref("total/grad/student_logits"), rtol, atol, "grad student_logits")
    if ref("total/grad/student_feat") is not None:
      _check(np.asarray(grads[1]).transpose(0, 3, 1, 2), ref("total/grad/student_feat"), rtol, atol,
             "grad student_feat")
    named = {**{f"match/{k}": v for k, v in convert.flax_to_torch({"params": grads[2]}).items()},
             **{f"{k.split('.', 1)[0]}/{k.split('.', 1)[1]}": v
                for k, v in convert.flax_to_torch({"params": grads[3]}).items()}}
    # Each gradient relative to the scale of its network's gradients (some are 0..6e-8, where an
    # absolute 1e-6 would accept anything; a conv bias before BatchNorm has an exactly-zero gradient
    # that float32 rounds to ~1e-9 noise); a floor for the saturated FeatureWeight (~1e-57).
    scale_rtol, floor = (GRAD_SCALE_RTOL_F32, 1e-30) if dtype == np.float32 else (1e-9, 1e-300)
    scales: dict[str, float] = {}
    for name in named:
      reference = ref(f"total/grad/{name}")
      reference = ref(f"total/gradnorm/{name}") if reference is None else reference
      if reference is not None:
        net = name.split("/")[0]
        scales[net] = max(scales.get(net, 0.0), float(np.max(np.abs(reference))))

    def grad_atol(name):
      return max(scale_rtol * scales[name.split("/")[0]], floor)
    compared = 0
    for name, value in named.items():
      if ref(f"total/grad/{name}") is not None:
        _check(value, ref(f"total/grad/{name}"), rtol, grad_atol(name), f"grad {name}")
        compared += 1
      elif ref(f"total/gradsum/{name}") is not None:
        norm = ref(f"total/gradnorm/{name}")
        _check(np.sum(value), ref(f"total/gradsum/{name}"), max(rtol, 1e-4), grad_atol(name) * 10, f"gradsum {name}")
        _check(np.linalg.norm(value), norm, rtol, grad_atol(name), f"gradnorm {name}")
        compared += 1
    assert compared >= 10


def test_cosine_feature_input_does_not_saturate():
  """Raw Gram entries of post-ReLU maps are large, so the feature-weight softmax starts one-hot
  (its hypergradient ~1e-40); cosine-normalised Grams are in [-1, 1]."""
  fractions = {}
  for mode in ("raw", "cosine"):
    method, batch = method_and_batch("mmkd", 16, 10, None, **{"mmkd.feature_input": mode})
    batch = dict(batch, teacher_feat=tuple(20 * f for f in batch["teacher_feat"]))  # CIFAR-scale maps
    params, state, meta = method.init(jax.random.key(0), batch)
    _, (_, aux) = method.train_objective(params, state, meta, batch)
    fractions[mode] = float(aux["diagnostics"]["feature_weights_onehot"])
  assert fractions["raw"] > 0.9 and fractions["cosine"] == 0.0
  x = feature_weight_input(batch["teacher_feat"], batch["teacher_feat"][0], mode="cosine")
  assert float(jnp.max(jnp.abs(x))) <= 1.0 + 1e-6
