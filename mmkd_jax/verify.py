"""Checks this library against reference outputs of the original PyTorch code.

    python -m mmkd_jax.verify models FILE.npz [FILE.npz ...] [--arch NAME] [--atol X]
    python -m mmkd_jax.verify hypergrad FILE.npz [FILE.npz ...] [--rtol X]

reads files in the format of ``shared/testvectors/models`` (any architecture of the zoo,
any recipe seed), regenerates the weights by the documented recipe, runs the Flax model and
prints, per file, the max abs error of the eval-mode logits and features, the preact
features, the train-mode logits and the updated running statistics. It exits non-zero when
any error exceeds its tolerance.

``hypergrad`` reads MMKD meta-step files (``shared/testvectors/mmkd/hypergrad_*.npz``: any
student of the zoo, any seed, zero or given momentum), runs the look-ahead and the exact
hypergradient in float64 and prints the relative errors of the step losses, the final loss
and the hypergradient, plus (for information) the cosine to the original code's approximate
hypergradient; it exits non-zero when the exact hypergradient is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Mapping, Sequence

import numpy as np

# Tolerance floor when no per-output table is available (see f32_vs_f64.json).
DEFAULT_ATOL = 1e-4
_TOLERANCE_TABLE = "f32_vs_f64.json"


def recipe_tensors(keys: Sequence[str], shapes: Mapping[str, Sequence[int]], seed: int,
                   bn_stats: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """The test vectors' weight recipe: tensor i drawn from ``default_rng([seed, i])``.

  BatchNorm running statistics come from ``bn_stats`` (default: PyTorch's 0 / 1 init).
  """
  state_dict = {}
  for i, key in enumerate(keys):
    shape = tuple(int(s) for s in shapes[key])
    if key.endswith(("running_mean", "running_var")):
      if bn_stats is not None:
        state_dict[key] = np.asarray(bn_stats[key], np.float32)
      else:
        state_dict[key] = (np.zeros if key.endswith("mean") else np.ones)(shape, np.float32)
    elif key.endswith("num_batches_tracked"):
      continue
    else:
      rng = np.random.default_rng([seed, i])
      if len(shape) >= 2:
        value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
      elif key.endswith("weight"):
        value = 1.0 + 0.1 * rng.standard_normal(shape)
      else:
        value = 0.1 * rng.standard_normal(shape)
      state_dict[key] = value.astype(np.float32)
  return state_dict


def recipe_state_dict(npz: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Regenerates the reference state_dict of a ``testvectors/models`` file."""
  keys = [str(k) for k in npz["keys"]]
  return recipe_tensors(keys, {k: npz["shape/" + k] for k in keys}, int(npz["recipe_seed"]),
                        {k: npz["bn_stats/" + k] for k in keys
                         if k.endswith(("running_mean", "running_var"))})


def _nchw(x: np.ndarray) -> np.ndarray:
  return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


@dataclasses.dataclass
class OutputCheck:
  name: str
  error: float
  atol: float

  @property
  def ok(self) -> bool:
    return bool(np.isfinite(self.error) and self.error <= self.atol)


@dataclasses.dataclass
class ModelReport:
  path: str
  arch: str
  checks: list[OutputCheck]

  @property
  def ok(self) -> bool:
    return all(c.ok for c in self.checks)

  def worst(self, prefix: str = "") -> float:
    return max((c.error for c in self.checks if c.name.startswith(prefix)), default=0.0)


def infer_arch(npz: Mapping[str, np.ndarray], path: str) -> str:
  """The zoo architecture a vector file belongs to: its file name, else its keys and shapes."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel
  from mmkd_jax.models import get_model, model_names  # pylint: disable=import-outside-toplevel

  stem = os.path.splitext(os.path.basename(path))[0]
  if stem in model_names():
    return stem
  shapes = {str(k): tuple(int(s) for s in npz["shape/" + str(k)]) for k in npz["keys"]
            if not str(k).endswith("num_batches_tracked")}
  num_classes = int(npz["logits"].shape[-1])
  for name in model_names():
    template = jax.eval_shape(get_model(name, num_classes).init, jax.random.key(0),
                              jnp.zeros((1, *np.asarray(npz["input"]).shape[2:], npz["input"].shape[1])))
    candidate = {k: v.shape for k, v in convert.flax_to_torch(
        jax.tree.map(lambda s: np.zeros(s.shape, np.float32), template)).items()}
    if candidate == shapes:
      return name
  raise ValueError(f"{path}: its keys match no architecture of the zoo; pass --arch "
                   f"(known: {', '.join(model_names())})")


def _tolerances(path: str, arch: str) -> dict[str, float]:
  table_path = os.path.join(os.path.dirname(os.path.abspath(path)), _TOLERANCE_TABLE)
  if os.path.exists(table_path):
    with open(table_path) as f:
      table = json.load(f)
    if arch in table:
      return dict(table[arch].get("suggested_atol", {}))
  return {}


def _atol(table: Mapping[str, float], name: str, override: float | None) -> float:
  if override is not None:
    return override
  if name in table:
    return table[name]
  for pattern, value in table.items():
    if pattern.endswith("*") and name.startswith(pattern[:-1]):
      return value
  return DEFAULT_ATOL


def check_model_file(path: str, arch: str | None = None, atol: float | None = None) -> ModelReport:
  """Runs the Flax model on one reference file and measures every output's error."""
  import jax  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel
  from mmkd_jax.models import get_model  # pylint: disable=import-outside-toplevel

  with np.load(path, allow_pickle=False) as f:
    npz = {k: f[k] for k in f.files}
  arch = arch or infer_arch(npz, path)
  model = get_model(arch, int(npz["logits"].shape[-1]))
  x = np.asarray(npz["input"], np.float32).transpose(0, 2, 3, 1)
  template = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = convert.torch_to_flax(recipe_state_dict(npz), template)

  @jax.jit
  def run(variables, x):
    feats, logits = model.apply(variables, x, train=False)
    pre_feats, _ = model.apply(variables, x, train=False, preact=True)
    (_, train_logits), updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return feats, logits, pre_feats, train_logits, updated["batch_stats"]

  with jax.default_matmul_precision("highest"):
    feats, logits, pre_feats, train_logits, new_stats = jax.device_get(run(variables, x))

  table = _tolerances(path, arch)
  outputs: dict[str, np.ndarray] = {"logits": logits, "train_logits": train_logits}
  for i, f in enumerate(feats):
    outputs[f"feat_{i}"] = _nchw(f)
  for i, f in enumerate(pre_feats):
    if f"preact_feat_{i}" in npz:
      outputs[f"preact_feat_{i}"] = _nchw(f)
  for key, value in convert.flax_to_torch({"batch_stats": new_stats}).items():
    outputs[f"train_bn_stats/{key}"] = value
  expected = [k for k in npz if k in ("logits", "train_logits") or k.startswith(
      ("feat_", "preact_feat_", "train_bn_stats/"))]
  checks = []
  for name in expected:
    if name not in outputs:
      checks.append(OutputCheck(name, float("inf"), _atol(table, name, atol)))
      continue
    ref, got = npz[name], outputs[name]
    error = float(np.max(np.abs(ref - got))) if ref.shape == got.shape else float("inf")
    checks.append(OutputCheck(name, error, _atol(table, name, atol)))
  return ModelReport(path, arch, checks)


def _print_model_report(report: ModelReport) -> None:
  status = "OK" if report.ok else "FAIL"
  groups = (("logits", "logits"), ("features", "feat_"), ("preact features", "preact_feat_"),
            ("train logits", "train_logits"), ("running stats", "train_bn_stats/"))
  parts = []
  for label, prefix in groups:
    relevant = [c for c in report.checks if c.name.startswith(prefix)]
    if relevant:
      parts.append(f"{label} {max(c.error for c in relevant):.2e}")
  print(f"{status:4s} {report.arch:12s} {os.path.basename(report.path)}: " + ", ".join(parts))
  for c in report.checks:
    if not c.ok:
      print(f"       {c.name}: max abs error {c.error:.3e} > tolerance {c.atol:.1e}")


# ---------------------------------------------------------------------------------------
# hypergrad: one MMKD meta step (testvectors/mmkd/hypergrad_*.npz format), in float64.

# Below this norm a hypergradient block is "saturated" (e.g. a one-hot FeatureWeight softmax,
# ~1e-40) and is compared with an absolute tolerance instead of a relative one.
_SATURATED_NORM = 1e-20
_SATURATED_ATOL = 1e-30
HYPERGRAD_RTOL = 1e-6


def _strip(prefix: str, npz: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: npz[k] for k in npz if k.startswith(prefix)}


def _module_state_dict(npz: Mapping[str, np.ndarray], module: str) -> dict[str, np.ndarray]:
  """Parameters + BN buffers of ``module`` ('student' or 'match') from either file layout."""
  stored = _strip(f"student_params/{module}.", npz)
  if stored:
    stored.update(_strip(f"buffers/{module}.", npz))
    return stored
  prefix = f"recipe/{module}/"
  keys = [str(k) for k in npz[prefix + "keys"]]
  return recipe_tensors(keys, {k: npz[f"{prefix}shape/{k}"] for k in keys}, int(npz[prefix + "seed"]))


def _momentum_state_dict(npz: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
  stored = {k: v for k, v in _strip("momentum/", npz).items() if k != "recipe_seed"}
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
  checks: list[OutputCheck]
  official_cosine: float

  @property
  def ok(self) -> bool:
    return all(c.ok for c in self.checks)


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  if got.shape != ref.shape:
    return float("inf")
  scale = np.linalg.norm(ref)
  return float(np.linalg.norm(got - ref) / scale) if scale > 0 else float(np.linalg.norm(got))


def check_hypergrad_file(path: str, rtol: float = HYPERGRAD_RTOL,
                         mode: str = "forward_over_reverse") -> HypergradReport:
  """Runs MMKD's look-ahead and exact hypergradient in float64 on one reference meta step.

  ``mode`` is the way the hypergradient is computed (``mmkd_jax.bilevel.MODES``)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mmkd_jax import bilevel, optim  # pylint: disable=import-outside-toplevel
  from mmkd_jax.methods import LossWeights, RunInfo, TeacherView  # pylint: disable=import-outside-toplevel
  from mmkd_jax.methods.mmkd import MMKD  # pylint: disable=import-outside-toplevel
  from mmkd_jax.models import get_model  # pylint: disable=import-outside-toplevel
  from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel

  with np.load(path, allow_pickle=False) as f:
    npz = {k: f[k] for k in f.files}
  num_teachers = len([k for k in npz if k.startswith("teacher_logits_")])
  num_classes = int(npz["teacher_logits_0"].shape[-1])
  student_sd = _module_state_dict(npz, "student")
  match_sd = _module_state_dict(npz, "match")
  if "student_arch" in npz:
    arch = str(npz["student_arch"])
  else:
    arch = infer_arch({"keys": np.array(list(student_sd)),
                       **{f"shape/{k}": np.array(v.shape) for k, v in student_sd.items()},
                       "logits": np.zeros((1, num_classes)), "input": npz["x"]}, "")
  hyper = {k: npz[f"hyper/{k}"].item() for k in
           ("lr", "momentum", "weight_decay", "nesterov", "alpha", "beta", "kd_T")}

  with jax.enable_x64(True):
    f64 = lambda a: jnp.asarray(np.asarray(a, np.float64))
    nhwc = lambda a: f64(np.asarray(a).transpose(0, 2, 3, 1))
    batch = {
        "image": nhwc(npz["x"]),
        "label": jnp.asarray(npz["y"], jnp.int32),
        "teacher_logits": jnp.stack([f64(npz[f"teacher_logits_{t}"]) for t in range(num_teachers)], axis=1),
        "teacher_feat": tuple(nhwc(npz[f"teacher_feat_{t}"]) for t in range(num_teachers)),
    }
    views = tuple(TeacherView(f"t{t}", "", tuple(batch["teacher_feat"][t].shape[1:]))
                  for t in range(num_teachers))
    run = RunInfo(get_model(arch, num_classes), num_classes, len(npz["y"]), teachers=views)
    # The reference: training CE + KD + beta feat; look-ahead alpha KD + beta feat.
    method = MMKD(run, LossWeights((("ce", 1.0), ("kd", 1.0), ("feat", hyper["beta"]))), hyper["kd_T"],
                  lookahead_weights=LossWeights((("ce", 0.0), ("kd", hyper["alpha"]), ("feat", hyper["beta"]))))
    p_shape, s_shape, m_shape = jax.eval_shape(method.init, jax.random.key(0), batch)
    to64 = lambda tree: jax.tree.map(f64, tree)
    params, state = {}, {}
    for module, sd in (("student", student_sd), ("match", match_sd)):
      v = convert.torch_to_flax(sd, {"params": p_shape[module], "batch_stats": s_shape[module]},
                                np.float64)
      params[module], state[module] = to64(v["params"]), to64(v["batch_stats"])
    meta = to64(convert.torch_to_flax(_strip("meta_params/", npz), {"params": m_shape},
                                      np.float64)["params"])
    optimizer = optim.torch_sgd(hyper["lr"], hyper["momentum"], bool(hyper["nesterov"]),
                                hyper["weight_decay"])
    opt_state = optimizer.init(params)
    momentum_sd = _momentum_state_dict(npz)
    if momentum_sd is not None:
      buffers = {m: to64(convert.torch_to_flax(_strip(m + ".", momentum_sd),
                                               {"params": p_shape[m]}, np.float64)["params"])
                 for m in ("student", "match")}
      opt_state = optim.set_momentum(opt_state, buffers)

    @jax.jit
    def meta_step(params, opt_state, state, meta):
      final, grads, result = bilevel.hypergradient(
          optimizer, method.lookahead_objectives(), method.outer_objective,
          params, opt_state, state, meta, batch, mode=mode)
      _, (_, outer_metrics) = method.outer_objective(result.params, result.model_state, meta, batch)
      return final, grads, result.losses, result.metrics[0], result.model_state, outer_metrics["logits"]

    final, grads, step_losses, step0, state_after, final_logits = jax.device_get(
        meta_step(params, opt_state, state, meta))

  checks = []
  def add(name, got, ref, tol=rtol):
    checks.append(OutputCheck(name, _relative_error(got, ref), tol))

  add("unrolled_losses", np.array(step_losses), npz["unrolled_losses"])
  add("final_outer_loss", final, npz["final_outer_loss"])
  if "final_student_logits" in npz:
    add("final_student_logits", final_logits, npz["final_student_logits"])
  step0_map = {"student_logits": step0["logits"], "per_sample_kd": step0["per_sample_kd"],
               "logits_weights": step0["logits_weights"], "feature_weights": step0["feature_weights"],
               "loss_div": step0["terms"]["kd"], "loss_feat": step0["terms"]["feat"],
               "student_feat": _nchw(np.asarray(step0["student_feat"])),
               "student_feat_sum": np.sum(step0["student_feat"]),
               "student_feat_sq_sum": np.sum(np.square(step0["student_feat"]))}
  for key, value in step0_map.items():
    if f"step0/{key}" in npz:
      add(f"step0/{key}", value, npz[f"step0/{key}"])
  buffers_after = {}
  for module in ("student", "match"):
    for k, v in convert.flax_to_torch({"batch_stats": state_after[module]}).items():
      buffers_after[f"{module}.{k}"] = v
  for key, value in buffers_after.items():
    if f"buffers_after_steps/{key}" in npz:
      add(f"buffers_after_steps/{key}", value, npz[f"buffers_after_steps/{key}"])
  ours = convert.flax_to_torch({"params": grads})
  reference = _strip("exact_hypergrad/", npz)
  official = _strip("official_hypergrad/", npz)
  for net in sorted({k.split(".")[0] for k in reference}):
    keys = sorted(k for k in reference if k.startswith(net + "."))
    got = np.concatenate([ours[k].ravel() for k in keys])
    ref = np.concatenate([reference[k].ravel() for k in keys])
    if np.linalg.norm(ref) < _SATURATED_NORM:
      checks.append(OutputCheck(f"exact_hypergrad/{net} (saturated, abs)",
                                float(np.max(np.abs(got - ref))), _SATURATED_ATOL))
    else:
      add(f"exact_hypergrad/{net}", got, ref)
  all_keys = sorted(reference)
  g = np.concatenate([ours[k].ravel() for k in all_keys])
  o = np.concatenate([official[k].ravel() for k in all_keys]) if official else g
  cosine = float(g @ o / (np.linalg.norm(g) * np.linalg.norm(o)))
  return HypergradReport(path, arch, checks, cosine)


def _print_hypergrad_report(report: HypergradReport) -> None:
  status = "OK" if report.ok else "FAIL"
  worst = max(report.checks, key=lambda c: c.error / c.atol)
  hyper = [c for c in report.checks if c.name.startswith("exact_hypergrad")]
  print(f"{status:4s} {report.arch:10s} {os.path.basename(report.path)}: "
        + ", ".join(f"{c.name.split('/', 1)[1]} {c.error:.2e}" for c in hyper)
        + f"; worst {worst.name} {worst.error:.2e}; cosine to the original's approximate "
          f"hypergradient {report.official_cosine:.4f}")
  for c in report.checks:
    if not c.ok:
      print(f"       {c.name}: error {c.error:.3e} > tolerance {c.atol:.1e}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mmkd_jax.verify", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="what", required=True)
  models = sub.add_parser("models", help="model zoo parity against PyTorch reference outputs")
  models.add_argument("files", nargs="+", help="reference .npz files (testvectors/models format)")
  models.add_argument("--arch", help="architecture, when the file name does not say it")
  models.add_argument("--atol", type=float, help="one absolute tolerance for every output "
                      "(default: f32_vs_f64.json beside the file, else 1e-4)")
  hypergrad = sub.add_parser("hypergrad", help="MMKD look-ahead and exact hypergradient (float64)")
  hypergrad.add_argument("files", nargs="+", help="meta-step .npz files (testvectors/mmkd format)")
  hypergrad.add_argument("--rtol", type=float, default=HYPERGRAD_RTOL,
                         help="relative tolerance of losses and hypergradient")
  hypergrad.add_argument("--mode", default="forward_over_reverse",
                         choices=("reverse", "forward_over_reverse"),
                         help="how the exact hypergradient is computed (mmkd_jax.bilevel)")
  args = parser.parse_args(argv)

  failures = 0
  for path in args.files:
    if not os.path.exists(path):
      print(f"FAIL {path}: no such file")
      failures += 1
      continue
    try:
      if args.what == "models":
        report = check_model_file(path, args.arch, args.atol)
        _print_model_report(report)
      else:
        report = check_hypergrad_file(path, args.rtol, args.mode)
        _print_hypergrad_report(report)
    except (ValueError, KeyError) as e:
      print(f"FAIL {path}: {type(e).__name__}: {e}")
      failures += 1
      continue
    failures += not report.ok
  print(f"{len(args.files) - failures} passed, {failures} failed")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
