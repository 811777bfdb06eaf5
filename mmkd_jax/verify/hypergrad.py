"""``verify hypergrad``: one MMKD meta step (testvectors/mmkd/hypergrad_*.npz) in float64.

Exact modes (``reverse``, ``forward_over_reverse``) are checked against the file's
``exact_hypergrad/*``; ``original`` (the original code's approximate reverse pass) against its
``official_hypergrad/*``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.distill import hypergradient as bilevel
from mmkd_jax.methods import LossWeights, RunInfo, TeacherView
from mmkd_jax.methods import bilevel as bilevel_methods
from mmkd_jax.methods.mmkd import MMKD
from mmkd_jax.models import get_model
from mmkd_jax.teachers import convert
from mmkd_jax.training import optim

from mmkd_jax.verify.common import OutputCheck, nchw, relative_error, strip
from mmkd_jax.verify.models import infer_arch, recipe_tensors

HYPERGRAD_RTOL = 1e-10   # achieved ~1e-13; 1e-6 would accept a float32 downcast
ORIGINAL_RTOL = 1e-9
_HYPER = ("lr", "momentum", "weight_decay", "nesterov", "alpha", "beta", "kd_T")


def _module_state_dict(npz: Mapping[str, np.ndarray], module: str) -> dict[str, np.ndarray]:
  """Parameters + BN buffers of ``module`` ('student' or 'match') from either file layout."""
  stored = strip(f"student_params/{module}.", npz)
  if stored:
    stored.update(strip(f"buffers/{module}.", npz))
    return stored
  prefix = f"recipe/{module}/"
  keys = [str(k) for k in npz[prefix + "keys"]]
  return recipe_tensors(keys, {k: npz[f"{prefix}shape/{k}"] for k in keys}, int(npz[prefix + "seed"]))


def _momentum_state_dict(npz: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
  stored = {k: v for k, v in strip("momentum/", npz).items() if k != "recipe_seed"}
  if stored:
    return stored
  if "momentum/recipe_seed" not in npz:
    return None
  seed = int(npz["momentum/recipe_seed"])
  shapes = {**{"student." + k: v.shape for k, v in _module_state_dict(npz, "student").items()},
            **{"match." + k: v.shape for k, v in _module_state_dict(npz, "match").items()}}
  return {name: (0.01 * np.random.default_rng([seed, j]).standard_normal(shapes[name])).astype(np.float32)
          for j, name in enumerate(str(n) for n in npz["param_order"])}


@dataclasses.dataclass
class HypergradReport:
  path: str
  arch: str
  mode: str
  checks: list[OutputCheck]
  official_cosine: float

  @property
  def ok(self) -> bool:
    return all(c.ok for c in self.checks)


def load_meta_step(npz: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Everything one file defines, in float64 Flax layout: the MMKD method, batch, parameters,
  BN statistics, meta parameters, optimiser and its state (call under ``jax.enable_x64``)."""

  num_teachers = len([k for k in npz if k.startswith("teacher_logits_")])
  num_classes = int(npz["teacher_logits_0"].shape[-1])
  student_sd, match_sd = _module_state_dict(npz, "student"), _module_state_dict(npz, "match")
  arch = str(npz["student_arch"]) if "student_arch" in npz else infer_arch(
      {"keys": np.array(list(student_sd)), **{f"shape/{k}": np.array(v.shape) for k, v in student_sd.items()},
       "logits": np.zeros((1, num_classes)), "input": npz["x"]}, "")
  hyper = {k: npz[f"hyper/{k}"].item() for k in _HYPER}
  f64 = lambda a: jnp.asarray(np.asarray(a, np.float64))
  to64 = lambda tree: jax.tree.map(f64, tree)
  nhwc = lambda a: f64(np.asarray(a).transpose(0, 2, 3, 1))
  batch = {"image": nhwc(npz["x"]), "label": jnp.asarray(npz["y"], jnp.int32),
           "teacher_logits": jnp.stack([f64(npz[f"teacher_logits_{t}"]) for t in range(num_teachers)], axis=1),
           "teacher_feat": tuple(nhwc(npz[f"teacher_feat_{t}"]) for t in range(num_teachers))}
  views = tuple(TeacherView(f"t{t}", "", tuple(batch["teacher_feat"][t].shape[1:])) for t in range(num_teachers))
  run = RunInfo(get_model(arch, num_classes), num_classes, len(npz["y"]), teachers=views)
  # The reference: training CE + KD + beta feat; look-ahead alpha KD + beta feat.
  method = MMKD(run, LossWeights((("ce", 1.0), ("kd", 1.0), ("feat", hyper["beta"]))), hyper["kd_T"])
  lookahead = LossWeights((("ce", 0.0), ("kd", hyper["alpha"]), ("feat", hyper["beta"])))
  p_shape, s_shape, m_shape = jax.eval_shape(method.init, jax.random.key(0), batch)
  params, state = {}, {}
  for module, sd in (("student", student_sd), ("match", match_sd)):
    v = convert.torch_to_flax(sd, {"params": p_shape[module], "batch_stats": s_shape[module]}, np.float64)
    params[module], state[module] = to64(v["params"]), to64(v["batch_stats"])
  meta = to64(convert.torch_to_flax(strip("meta_params/", npz), {"params": m_shape}, np.float64)["params"])
  optimizer = optim.torch_sgd(hyper["lr"], hyper["momentum"], bool(hyper["nesterov"]), hyper["weight_decay"])
  opt_state = optimizer.init(params)
  momentum_sd = _momentum_state_dict(npz)
  if momentum_sd is not None:
    buffers = {m: to64(convert.torch_to_flax(strip(m + ".", momentum_sd), {"params": p_shape[m]},
                                              np.float64)["params"]) for m in ("student", "match")}
    opt_state = optim.set_momentum(opt_state, buffers)
  return {"arch": arch, "hyper": hyper, "method": method, "lookahead": bilevel_methods.unrolled(method, lookahead),
          "batch": batch, "params": params, "state": state, "meta": meta, "optimizer": optimizer, "opt_state": opt_state}


def run_meta_step(case: dict[str, Any], mode: str):
  """(final loss, hypergradient, step losses, step-0 aux, BN statistics after, final logits)."""
  method, hyper = case["method"], case["hyper"]
  heavy_ball = (hyper["lr"], hyper["momentum"], hyper["weight_decay"])

  @jax.jit
  def meta_step(params, opt_state, state, meta):
    final, grads, result = bilevel.hypergradient(
        case["optimizer"], case["lookahead"], method.outer_objective, params, opt_state, state,
        meta, case["batch"], mode=mode, heavy_ball=heavy_ball)
    _, (_, outer_metrics) = method.outer_objective(result.params, result.model_state, meta, case["batch"])
    return final, grads, result.losses, result.metrics[0], result.model_state, outer_metrics["logits"]

  return jax.device_get(meta_step(case["params"], case["opt_state"], case["state"], case["meta"]))


def _hypergradient_checks(npz, grads, mode: str, rtol: float) -> tuple[list[OutputCheck], float]:
  ours = convert.flax_to_torch({"params": grads})
  exact, official = strip("exact_hypergrad/", npz), strip("official_hypergrad/", npz)
  reference = official if mode == "original" else exact
  label = "official_hypergrad" if mode == "original" else "exact_hypergrad"
  blocks = {}
  for net in sorted({k.split(".")[0] for k in reference}):
    keys = sorted(k for k in reference if k.startswith(net + "."))
    blocks[net] = (np.concatenate([ours[k].ravel() for k in keys]), np.concatenate([reference[k].ravel() for k in keys]))
  # Each block relative to its own norm, a saturated feature-weight softmax (norm ~3e-40) too.
  checks = [OutputCheck(f"{label}/{net}", relative_error(got, ref), rtol) for net, (got, ref) in blocks.items()]
  keys = sorted(exact)
  g = np.concatenate([ours[k].ravel() for k in keys])
  o = np.concatenate([official[k].ravel() for k in keys]) if official else g
  return checks, float(g @ o / (np.linalg.norm(g) * np.linalg.norm(o)))


def check_hypergrad_file(path: str, rtol: float | None = None, mode: str = "forward_over_reverse") -> HypergradReport:
  """Runs MMKD's look-ahead and hypergradient (``mode``: ``mmkd_jax.distill.hypergradient.MODES``) on one
  reference meta step and measures every output's relative error."""
  rtol = rtol if rtol is not None else (ORIGINAL_RTOL if mode == "original" else HYPERGRAD_RTOL)
  with np.load(path, allow_pickle=False) as f:
    npz = {k: f[k] for k in f.files}
  with jax.enable_x64(True):
    case = load_meta_step(npz)
    final, grads, step_losses, step0, state_after, final_logits = run_meta_step(case, mode)
  checks = [OutputCheck("unrolled_losses", relative_error(np.array(step_losses), npz["unrolled_losses"]), rtol),
            OutputCheck("final_outer_loss", relative_error(final, npz["final_outer_loss"]), rtol)]
  if "final_student_logits" in npz:
    checks.append(OutputCheck("final_student_logits", relative_error(final_logits, npz["final_student_logits"]), rtol))
  step0_map = {"student_logits": step0["logits"], "per_sample_kd": step0["per_sample_kd"],
               "logits_weights": step0["teacher_weights"].logits, "feature_weights": step0["teacher_weights"].feature,
               "loss_div": step0["terms"]["kd"], "loss_feat": step0["terms"]["feat"],
               "student_feat": nchw(np.asarray(step0["student_feat"])),
               "student_feat_sum": np.sum(step0["student_feat"]),
               "student_feat_sq_sum": np.sum(np.square(step0["student_feat"]))}
  for key, value in step0_map.items():
    if f"step0/{key}" in npz:
      checks.append(OutputCheck(f"step0/{key}", relative_error(value, npz[f"step0/{key}"]), rtol))
  for module in ("student", "match"):
    for k, v in convert.flax_to_torch({"batch_stats": state_after[module]}).items():
      key = f"buffers_after_steps/{module}.{k}"
      if key in npz:
        checks.append(OutputCheck(key, relative_error(v, npz[key]), rtol))
  grad_checks, cosine = _hypergradient_checks(npz, grads, mode, rtol)
  return HypergradReport(path, case["arch"], mode, checks + grad_checks, cosine)


def print_hypergrad_report(report: HypergradReport) -> None:
  status = "OK" if report.ok else "FAIL"
  worst = max(report.checks, key=lambda c: c.error / c.atol)
  hyper = [c for c in report.checks if "hypergrad/" in c.name]
  print(f"{status:4s} {report.arch:10s} {os.path.basename(report.path)} [{report.mode}]: "
        + ", ".join(f"{c.name.split('/', 1)[1]} {c.error:.2e}" for c in hyper)
        + f"; worst {worst.name} {worst.error:.2e}; cosine of ours to the original's approximate "
          f"hypergradient {report.official_cosine:.4f}")
  for c in report.checks:
    if not c.ok:
      print(f"       {c.name}: error {c.error:.3e} > tolerance {c.atol:.1e}")
