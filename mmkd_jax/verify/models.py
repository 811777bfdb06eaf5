"""``verify models``: the model zoo against the PyTorch reference outputs (testvectors/models)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.models import get_model, model_names
from mmkd_jax.teachers import convert

from mmkd_jax.verify.common import OutputCheck, nchw

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
    outputs[f"feat_{i}"] = nchw(f)
  for i, f in enumerate(pre_feats):
    if f"preact_feat_{i}" in npz:
      outputs[f"preact_feat_{i}"] = nchw(f)
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


def print_model_report(report: ModelReport) -> None:
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
