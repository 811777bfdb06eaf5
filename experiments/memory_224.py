"""The 224x224 setting (Stanford Dogs: 3 x ResNet34x4 teachers, precomputed): XLA's memory and
the step times of MMKD, with and without recomputing the look-ahead's activations.

    python experiments/memory_224.py --student ResNet18 --teacher ResNet34x4 --batch 64

Compiles the plain and the meta step (precomputed teacher outputs: logits and feat[-2], 7x7x512
at 224) with ``meta.remat`` off and on, prints XLA's temporary / argument / output bytes of each
compiled program (``memory_analysis``), and times them (median of ``--repeats`` after one warm-up;
``--repeats 0`` compiles only). Uses the trainer's own steps (``steps.make_steps``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import benchmark_step  # pylint: disable=wrong-import-position

from mmkd_jax.training import parallel  # pylint: disable=wrong-import-position
from mmkd_jax.training import steps as steps_lib
from mmkd_jax.training import setup as train
from mmkd_jax.data.sources import DatasetSpec  # pylint: disable=wrong-import-position
from mmkd_jax.methods import build_method  # pylint: disable=wrong-import-position
from mmkd_jax.models import get_model  # pylint: disable=wrong-import-position
from mmkd_jax.teachers import Teacher, fingerprint, teacher_forward  # pylint: disable=wrong-import-position


def measure(student: str, teacher: str, batch: int, size: int, repeats: int, classes: int = 120) -> dict:
  spec = DatasetSpec("stanford_dogs", classes, (size, size, 3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                     crop_padding=0, flip=False, host_transform=True)
  teachers = []
  for i in range(3):
    v = get_model(teacher, classes).init(jax.random.key(i), jnp.zeros((1, size, size, 3)))
    teachers.append(Teacher(f"t{i}", teacher, classes, v, fingerprint(v)))
  rng = np.random.default_rng(0)
  raw = {"image": rng.integers(0, 256, (batch, size, size, 3)).astype(np.uint8),
         "label": rng.integers(0, classes, batch).astype(np.int32),
         "index": np.arange(batch, dtype=np.int32), "replay": np.zeros(batch, np.int32)}
  x = jnp.asarray((raw["image"] / 255.0 - 0.45) / 0.226, jnp.float32)
  logits, feats = jax.jit(lambda v, x: teacher_forward(teachers, v, x))(tuple(t.variables for t in teachers), x)
  raw.update(teacher_logits=np.asarray(logits), teacher_feat=tuple(np.asarray(f) for f in feats))
  out = {"student": student, "teacher": teacher, "batch": batch, "size": size, "teacher_feat": list(feats[0].shape[1:])}
  mesh = parallel.data_mesh()
  for mode, remat in (("forward_over_reverse", False), ("forward_over_reverse", True), ("reverse", False),
                      ("reverse", True)):
    config = benchmark_step.make_config(batch, classes, "precomputed",
                                        **{"meta.remat": remat, "meta.hypergradient": mode})
    run = train.run_info(config, spec, teachers, get_model(student, classes), 1)
    steps = steps_lib.make_steps(config, build_method(config, run), spec, teachers, mesh, 100)
    state = steps_lib.init_state(steps, raw, seed=0)
    device_raw, epoch = jax.tree.map(jnp.asarray, raw), jnp.asarray(1, jnp.int32)
    entry = {}
    for name, fn in (("plain", steps.train_step), ("meta", steps.meta_step)):
      if (remat or mode == "reverse") and name == "plain":
        continue  # these change the meta step only
      start = time.perf_counter()
      compiled = jax.jit(fn).lower(state, device_raw, (), epoch).compile()
      entry[name] = {"compile_s": time.perf_counter() - start, **benchmark_step.xla_memory_mib(compiled),
                     "gflops": benchmark_step.flops_of(compiled) / 1e9}
      if repeats:
        median, _ = benchmark_step.timed(compiled, state, device_raw, (), epoch, repeats=repeats, warmup=1)
        entry[name]["ms"] = 1e3 * median
    out[f"{mode}{'+remat' if remat else ''}"] = entry
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--student", default="ResNet18")
  parser.add_argument("--teacher", default="ResNet34x4")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  r = measure(args.student, args.teacher, args.batch, args.size, args.repeats)
  print(f"{args.student} <- 3 x {args.teacher}, {args.size}x{args.size}, batch {args.batch}, teacher feat[-2] {r['teacher_feat']}")
  print("| step | hypergradient (+remat: look-ahead recomputed) | XLA temporaries (GiB) | arguments (GiB) | GFLOP | compile s | ms |")
  print("|---|---|---|---|---|---|---|")
  for mode in [k for k in r if "reverse" in k]:
    for name, e in r[mode].items():
      print(f"| {name} | {mode} | {e.get('temp', float('nan')) / 1024:.2f} | {e.get('argument', float('nan')) / 1024:.2f} | "
            f"{e['gflops']:.0f} | {e['compile_s']:.0f} | {e.get('ms', float('nan')):.0f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
