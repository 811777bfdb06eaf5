"""Checks this library against reference outputs of the original PyTorch code.

    python -m mmkd_jax.verify models FILE.npz [FILE.npz ...] [--arch NAME] [--atol X]
    python -m mmkd_jax.verify hypergrad FILE.npz [FILE.npz ...] [--mode MODE] [--rtol X]

reads files in the format of ``shared/testvectors/models`` (any architecture of the zoo,
any recipe seed), regenerates the weights by the documented recipe, runs the Flax model and
prints, per file, the max abs error of the eval-mode logits and features, the preact
features, the train-mode logits and the updated running statistics. It exits non-zero when
any error exceeds its tolerance.

``hypergrad`` reads MMKD meta-step files (``shared/testvectors/mmkd/hypergrad_*.npz``: any
student of the zoo, any seed, zero or given momentum), runs the look-ahead and the exact
hypergradient in float64 and prints the relative errors of the step losses, the final loss
and the hypergradient, plus (for information) the cosine to the original code's approximate
hypergradient; it exits non-zero when the exact hypergradient is missed. ``--mode original``
computes the original code's approximate hypergradient instead and checks it against the file's
``official_hypergrad`` arrays (relative tolerance 1e-9).

The reference vectors are not part of this repository: they are the outputs of the PyTorch
reference code described in the project's ``shared/testvectors/README.md`` (pass the files).
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from mmkd_jax.verify.common import OutputCheck, relative_error
from mmkd_jax.verify.hypergrad import (HYPERGRAD_RTOL, ORIGINAL_RTOL, HypergradReport, check_hypergrad_file,
                                       print_hypergrad_report)
from mmkd_jax.verify.models import (DEFAULT_ATOL, ModelReport, check_model_file, infer_arch, print_model_report,
                                    recipe_state_dict, recipe_tensors)

MODES = ("reverse", "forward_over_reverse", "original")


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
  hypergrad.add_argument("--rtol", type=float, default=None,
                         help=f"relative tolerance (default {HYPERGRAD_RTOL:g}; {ORIGINAL_RTOL:g} for --mode original)")
  hypergrad.add_argument("--mode", default="forward_over_reverse", choices=MODES,
                         help="reverse / forward_over_reverse: the exact hypergradient (two ways); "
                              "original: the original code's approximation, against official_hypergrad")
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
        print_model_report(report)
      else:
        report = check_hypergrad_file(path, args.rtol, args.mode)
        print_hypergrad_report(report)
    except (ValueError, KeyError) as e:
      print(f"FAIL {path}: {type(e).__name__}: {e}")
      failures += 1
      continue
    failures += not report.ok
  print(f"{len(args.files) - failures} passed, {failures} failed")
  return 1 if failures else 0


__all__ = ["DEFAULT_ATOL", "HYPERGRAD_RTOL", "ORIGINAL_RTOL", "HypergradReport", "ModelReport", "OutputCheck",
           "check_hypergrad_file", "check_model_file", "infer_arch", "main", "recipe_state_dict", "recipe_tensors",
           "relative_error"]
