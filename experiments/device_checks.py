"""What an accelerator run checks before it measures (``accelerator_bench.py --all``).

* ``step_against_cpu``: one float32 MMKD train step and one meta step of the same state and batch,
  on the default device and on the host CPU; the relative error of the state's update (every
  floating-point leaf of new - old, as one vector) and of its metrics (losses, teacher weights,
  norms). On a GPU float32 matmuls and
  convolutions may run as TF32 by default: the device side runs at
  ``jax.default_matmul_precision("highest")`` for the check, and the default precision's error is
  reported beside it (for information, not checked).
* ``hypergradient_on_device``: the float64 look-ahead and exact hypergradient of the reference meta
  steps (``testvectors/mmkd/hypergrad_*.npz``, outputs of the original PyTorch code) computed on the
  default device, at the tolerance of ``python -m mmkd_jax.verify hypergrad``.
"""

from __future__ import annotations

import glob
import os

import jax
import numpy as np

from benchmark_step import synthetic_raw, synthetic_steps, teacher_outputs
from mmkd_jax.training import steps as steps_lib
from mmkd_jax.verify import HYPERGRAD_RTOL, check_hypergrad_file

# A float32 update computed in another order (another device's kernels) differs by ~1e-6
# relative; TF32 (10-bit mantissa) by ~1e-3, which this tolerance refuses.
STEP_RTOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
  norm = float(np.linalg.norm(ref))
  return float(np.linalg.norm(got - ref)) / norm if norm else float(np.linalg.norm(got))


def _update(old, new) -> np.ndarray:
  """new - old over every floating-point leaf of the state, as one float64 vector."""
  pairs = [(np.asarray(a, np.float64), np.asarray(b, np.float64))
           for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new))
           if np.issubdtype(np.asarray(a).dtype, np.floating)]
  return np.concatenate([(b - a).ravel() for a, b in pairs])


def _metrics(metrics: dict) -> np.ndarray:
  return np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(metrics)
                         if np.issubdtype(np.asarray(v).dtype, np.floating)])


def step_against_cpu(student: str = "resnet8", teacher_archs=("resnet8", "resnet8"), batch: int = 16,
                     num_classes: int = 100, overrides: dict | None = None) -> dict:
  """One float32 train step and meta step (MMKD, precomputed teachers) here and on the CPU: the
  relative error of the state's update and of the step's metrics (losses, weights, norms)."""
  cpu = jax.devices("cpu")[0]
  teachers, steps, _ = synthetic_steps(student, teacher_archs, batch, num_classes, "precomputed", "float32", overrides)
  raw = synthetic_raw(batch, num_classes)
  logits, feats = teacher_outputs(teachers, raw["image"], chunk=batch)  # both sides read these
  raw = dict(raw, teacher_logits=logits, teacher_feat=feats)
  state = jax.device_get(steps_lib.init_state(steps, raw, seed=0))
  for _ in range(2):  # a few plain steps first, so the meta step samples a filled hard buffer
    state = jax.device_get(jax.jit(steps.train_step)(state, raw, (), np.int32(1))[0])
  epoch = np.int32(1)
  device = jax.devices()[0]
  report = {"device": str(device), "tolerance": STEP_RTOL}
  for name in ("train_step", "meta_step"):
    fn = jax.jit(getattr(steps, name))
    on_cpu = jax.device_get(fn(jax.device_put(state, cpu), jax.device_put(raw, cpu), (), epoch))
    with jax.default_matmul_precision("highest"):
      highest = jax.device_get(jax.jit(getattr(steps, name))(state, raw, (), epoch))
    # The CPU has one float32 precision: its default is its highest (no second compile).
    default = highest if device.platform == "cpu" else jax.device_get(fn(state, raw, (), epoch))
    ref = _update(state, on_cpu[0])
    report[name] = {
        "update_rel_error": _relative(_update(state, highest[0]), ref),
        "metrics_rel_error": _relative(_metrics(highest[1]), _metrics(on_cpu[1])),
        "default_precision_update_rel_error": _relative(_update(state, default[0]), ref)}
  report["ok"] = all(report[n]["update_rel_error"] <= STEP_RTOL and report[n]["metrics_rel_error"] <= STEP_RTOL
                     for n in ("train_step", "meta_step"))
  return report


def default_vectors() -> str:
  """Where the reference meta steps are: $MMKD_TESTVECTORS/mmkd, else ../shared/testvectors/mmkd,
  else experiments/vectors (a copy carried to a machine without ../shared)."""
  candidates = [os.path.join(os.environ.get("MMKD_TESTVECTORS", ""), "mmkd"),
                os.path.join(REPO, "..", "shared", "testvectors", "mmkd"), os.path.join(REPO, "experiments", "vectors")]
  return next((c for c in candidates if glob.glob(os.path.join(c, "hypergrad_*.npz"))), candidates[1])


def hypergradient_on_device(vectors: str, limit: int = 0) -> dict:
  """The exact hypergradient of each reference meta step in ``vectors`` (the first ``limit``)."""
  files = sorted(glob.glob(os.path.join(vectors, "hypergrad_*.npz")))[:limit or None]
  if not files:
    return {"skipped": f"no hypergrad_*.npz in {vectors}", "ok": True, "files": []}
  rows = []
  for path in files:
    report = check_hypergrad_file(path)
    hyper = [c for c in report.checks if "hypergrad/" in c.name]
    rows.append({"file": os.path.basename(path), "ok": report.ok,
                 "hypergrad_rel_error": max(c.error for c in hyper),
                 "worst": max(report.checks, key=lambda c: c.error / c.atol).name,
                 "worst_rel_error": max(c.error for c in report.checks)})
  return {"device": str(jax.devices()[0]), "tolerance": HYPERGRAD_RTOL, "files": rows, "ok": all(r["ok"] for r in rows)}


def markdown(steps: dict, hyper: dict) -> list[str]:
  lines = [f"Float32 step on {steps['device']} against the CPU (relative error of the state's update and of "
           f"the metrics, tolerance {steps['tolerance']:g}; matmul precision highest, default in brackets): "
           + "; ".join(f"{n} {steps[n]['update_rel_error']:.1e} / {steps[n]['metrics_rel_error']:.1e} "
                       f"({steps[n]['default_precision_update_rel_error']:.1e})" for n in ("train_step", "meta_step"))
           + (" - OK" if steps["ok"] else " - FAILED"), ""]
  if hyper.get("skipped"):
    lines.append(f"Hypergradient on the device: skipped ({hyper['skipped']}).")
  else:
    lines.append(f"Float64 hypergradient on {hyper['device']} against the original code (tolerance "
                 f"{hyper['tolerance']:g}): " + "; ".join(
                     f"{r['file']} {r['hypergrad_rel_error']:.1e} (worst output {r['worst_rel_error']:.1e})"
                     for r in hyper["files"]) + (" - OK" if hyper["ok"] else " - FAILED"))
  return lines + [""]
