"""Evaluation-mode forward throughput of a setting's models, ours against the original's, and what
it implies for a whole run's evaluation (experiments/pytorch_end_to_end.py's profile rows).

    python experiments/eval_throughput.py --reference /path/to/MMKD --setting fashion_mnist

Each model of the end-to-end setting (the teachers and the student) forwards random images of
the setting's shape in eval mode: ours jitted at the run's evaluation batch (``eval_batch_size``),
the original's model class under ``torch.no_grad()`` at its test batch (half the training batch,
as its loader). Random weights: the time does not depend on them. Warm-up excluded, median of
``--repeats``. A run evaluates its teachers once and its student after every epoch, on the whole
test split; the implied seconds are forwards only (no data, no metrics).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import benchmark_step  # pylint: disable=wrong-import-position
import pytorch_end_to_end as e2e  # pylint: disable=wrong-import-position


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
  return benchmark_step.timed(fn, repeats=repeats, warmup=warmup)[0]


def ours_images_per_s(arch: str, batch: int, repeats: int) -> float:
  import jax  # pylint: disable=import-outside-toplevel
  from mmkd_jax.models import get_model  # pylint: disable=import-outside-toplevel
  model = get_model(arch, 10)
  x = jax.numpy.asarray(np.random.RandomState(0).rand(batch, 32, 32, 3).astype(np.float32))
  variables = model.init(jax.random.PRNGKey(0), x[:2], train=False)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[1])
  return batch / median_seconds(lambda: forward(variables, x).block_until_ready(), repeats)


def original_images_per_s(ref, arch: str, batch: int, repeats: int) -> float:
  torch = ref.torch
  model = ref.model_dict[arch](num_classes=10).eval()
  x = torch.from_numpy(np.random.RandomState(0).rand(batch, 3, 32, 32).astype(np.float32))

  def forward():
    with torch.no_grad():
      model(x)
  # a few batches per timing: one test batch of 32 is a few milliseconds
  return 8 * batch / median_seconds(lambda: [forward() for _ in range(8)], repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reference", default=os.environ.get("MMKD_REFERENCE", ""), required=False)
  parser.add_argument("--setting", choices=tuple(e2e.SETTINGS), default="fashion_mnist")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--test_images", type=int, default=10_000)
  args = parser.parse_args()
  if not args.reference:
    parser.error("--reference (a checkout of github.com/Rorozhl/MMKD) is needed")
  import compare_pytorch  # pylint: disable=import-outside-toplevel
  ref = compare_pytorch.import_reference(args.reference)
  setting = e2e.SETTINGS[args.setting]
  models = [(name, arch) for name, arch, _ in setting["teachers"]] + [("student", setting["student"])]
  print(f"| model | ours img/s (batch {setting['eval_batch_size']}) | original img/s (batch {e2e.BATCH // 2}) "
        "| ours / original |")
  print("|---|---|---|---|")
  seconds = {"ours": {}, "original": {}}
  for name, arch in models:
    ours = ours_images_per_s(arch, setting["eval_batch_size"], args.repeats)
    original = original_images_per_s(ref, arch, e2e.BATCH // 2, args.repeats)
    seconds["ours"][name], seconds["original"][name] = args.test_images / ours, args.test_images / original
    print(f"| {name} ({arch}) | {ours:,.0f} | {original:,.0f} | {ours / original:.2f}x |", flush=True)
  epochs = setting["epochs"]
  print(f"\nImplied forward seconds of a run's evaluation ({args.test_images:,} test images; the teachers "
        f"once, the student after each of {epochs} epochs):")
  for code in ("ours", "original"):
    teachers = sum(v for k, v in seconds[code].items() if k != "student")
    student = epochs * seconds[code]["student"]
    print(f"- {code}: teachers {teachers:.1f} + student {student:.1f} = {teachers + student:.1f} s")


if __name__ == "__main__":
  main()
