"""Times MMKD's training steps: plain, meta, amortised; compile time; FLOPs; memory.

    python experiments/benchmark_step.py --student vgg8 --teachers vgg13,vgg13,vgg13 --batch 64
    python experiments/benchmark_step.py --preset all --json runs/bench.json

For a (student, teachers, batch) setting on 32x32 inputs with 100 classes and synthetic data, it
measures (median of --repeats after --warmup calls, each call synchronised):
  * plain step (train objective + SGD + hard-buffer update) with teachers precomputed and online,
  * meta step (the 3-step look-ahead and exact hypergradient, Adam on the meta nets),
  * the amortised step at meta_freq 5 = (5 plain + 1 meta) / 5,
  * compile time of each step, FLOPs per step from XLA's cost analysis, achieved FLOP/s against
    a measured peak (a large float32 matmul), images/s and peak memory.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.training import parallel
from mmkd_jax.training import steps as steps_lib
from mmkd_jax.training import setup as train
from mmkd_jax.data.sources import DatasetSpec
from mmkd_jax.methods import build_method
from mmkd_jax.models import get_model
from mmkd_jax.teachers import Teacher, fingerprint, teacher_forward

PRESETS = {
    "vgg8": ("vgg8", ("vgg13",) * 3),
    "resnet8x4": ("resnet8x4", ("resnet32x4",) * 3),
    # the default digits job's models (experiments/pytorch_end_to_end.py --setting digits)
    "digits": ("resnet8", ("resnet14", "resnet20", "wrn_16_1")),
}


def teachers_label(archs) -> str:
  """``3 x vgg13`` for a pool of one architecture, else ``resnet14, resnet20, wrn_16_1``."""
  return ", ".join(archs) if len(set(archs)) > 1 else f"{len(archs)} x {archs[0]}"


def random_teachers(archs, num_classes: int, image_shape=(32, 32, 3)) -> list[Teacher]:
  """Randomly initialised teachers (keys 100, 101, ...): shapes and FLOPs are what a benchmark needs."""
  teachers = []
  for i, arch in enumerate(archs):
    v = get_model(arch, num_classes).init(jax.random.key(100 + i), jnp.zeros((1, *image_shape)))
    teachers.append(Teacher(f"t{i}", arch, num_classes, v, fingerprint(v)))
  return teachers


def write_report(path: str, text: str) -> None:
  """Writes a benchmark's JSON or markdown to ``path`` (its folder created); nothing for ""."""
  if path:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
      f.write(text)


def timed(fn, *args, repeats: int, warmup: int) -> tuple[float, list[float]]:
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def peak_flops(size: int = 2048, repeats: int = 5) -> float:
  """Achievable float32 matmul FLOP/s of the default device (the machine's practical peak)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  median, _ = timed(f, a, repeats=repeats, warmup=2)
  return 2 * size ** 3 / median


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def peak_memory_bytes() -> int:
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # CPU: process peak RSS


def synthetic_raw(batch: int, num_classes: int, seed: int = 0, shape=(32, 32, 3)) -> dict[str, np.ndarray]:
  """A host batch as the pipeline yields it: uint8 images, labels, example indices, replay 0."""
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch, *shape)).astype(np.uint8),
          "label": rng.integers(0, num_classes, batch).astype(np.int32),
          "index": np.arange(batch, dtype=np.int32), "replay": np.zeros(batch, np.int32)}


# The synthetic dataset's normalisation (its DatasetSpec and the teachers' inputs alike).
SYNTHETIC_MEAN, SYNTHETIC_STD = 0.5, 0.25


def synthetic_steps(student: str, teacher_archs, batch: int, num_classes: int, source: str, dtype: str,
                    overrides: dict | None = None, image_shape=(32, 32, 3)) -> tuple[list[Teacher], Any, Any]:
  """(random teachers, the run's ``steps_lib.Steps``, its resolved config) of a synthetic setting."""
  teachers = random_teachers(teacher_archs, num_classes, image_shape)
  channels = image_shape[-1]
  spec = DatasetSpec("synthetic", num_classes, image_shape, (SYNTHETIC_MEAN,) * channels, (SYNTHETIC_STD,) * channels)
  config = make_config(batch, num_classes, source, dtype=dtype, **(overrides or {}))
  run = train.run_info(config, spec, teachers, get_model(student, num_classes, 1, dtype), 1)
  steps = steps_lib.make_steps(config, build_method(config, run), spec, teachers, parallel.data_mesh(),
                               steps_per_epoch=781)
  return teachers, steps, config


def teacher_outputs(teachers, images: np.ndarray, chunk: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
  """The teachers' logits and feature maps of uint8 ``images`` (normalised as the synthetic spec),
  ``chunk`` images per call of one compiled forward pass."""
  forward = jax.jit(lambda v, x: teacher_forward(teachers, v, x))
  variables = tuple(t.variables for t in teachers)
  logits, feats = [], []
  for start in range(0, len(images), chunk):
    x = (images[start:start + chunk].astype(np.float32) / 255 - SYNTHETIC_MEAN) / SYNTHETIC_STD
    out_logits, out_feats = forward(variables, jnp.asarray(x))
    logits.append(np.asarray(out_logits))
    feats.append([np.asarray(f) for f in out_feats])
  return np.concatenate(logits), tuple(np.concatenate(maps) for maps in zip(*feats))


def make_config(batch: int, num_classes: int, teacher_source: str, method: str = "mmkd",
                **fields) -> ml_collections.ConfigDict:
  """A resolved config of the CIFAR-100 setting with the benchmark's batch and teachers."""
  c = config_lib.base_config()
  config_lib.set_fields(c, {"dataset": "cifar100" if num_classes == 100 else "digits", "batch_size": batch,
                            "teacher_source": teacher_source, "method": method, **fields})
  if "buffer_size" in c.get(method, {}):
    c[method].buffer_size = 4 * batch
  return config_lib.resolve(c)


def xla_memory_mib(compiled) -> dict[str, float]:
  """XLA's own accounting of one compiled step: live temporaries, arguments and outputs."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  return {k: getattr(analysis, f"{k}_size_in_bytes") / 2**20
          for k in ("temp", "argument", "output", "alias") if hasattr(analysis, f"{k}_size_in_bytes")}


def timed_interleaved(fns: dict, args, repeats: int, warmup: int) -> dict[str, float]:
  """Median seconds of each function; one call of each per round, so drifts of the machine's
  speed (shared CPUs) hit every function alike."""
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def benchmark(student: str, teacher_archs, batch: int, repeats: int, warmup: int,
              num_classes: int = 100, first_order: bool = False,
              modes: tuple[str, ...] = ("forward_over_reverse",)) -> dict:
  """``modes``: hypergradient modes to time (the first is the one the amortised figure uses)."""
  rng = np.random.default_rng(0)
  teachers = random_teachers(teacher_archs, num_classes)
  teacher_vars = tuple(t.variables for t in teachers)
  raw = jax.tree.map(jnp.asarray, synthetic_raw(batch, num_classes))
  spec = DatasetSpec("synthetic", num_classes, (32, 32, 3), (0.5,) * 3, (0.25,) * 3)
  x = jnp.asarray(rng.standard_normal((batch, 32, 32, 3)), jnp.float32)
  logits, feats = jax.jit(lambda v, x: teacher_forward(teachers, v, x))(teacher_vars, x)
  cached = dict(raw, teacher_logits=logits, teacher_feat=feats)
  result = {"student": student, "teachers": list(teacher_archs), "batch": batch,
            "devices": len(jax.devices())}
  epoch = jnp.asarray(1, jnp.int32)
  mesh = parallel.data_mesh()
  for source in ("precomputed", "online"):
    config = make_config(batch, num_classes, source, **{"meta.first_order": first_order})
    run = train.run_info(config, spec, teachers, get_model(student, num_classes), 1)
    steps = steps_lib.make_steps(config, build_method(config, run), spec, teachers, mesh, steps_per_epoch=781)
    setup_raw = cached if source == "precomputed" else raw
    tv = teacher_vars if source == "online" else ()
    state = steps_lib.init_state(steps, jax.device_get(setup_raw), seed=0)
    # Data-parallel over every visible device (one device: a no-op).
    state, setup_raw = parallel.copy_to_devices(state, mesh), parallel.shard_batch(setup_raw, mesh)
    tv = parallel.copy_to_devices(tv, mesh)
    compiled_steps, compile_s = {}, {}
    variants = [("plain", steps.train_step)]
    for mode in modes:
      c = make_config(batch, num_classes, source, **{"meta.first_order": first_order, "meta.hypergradient": mode})
      variants.append((f"meta_{mode}", dataclasses.replace(steps, config=c).meta_step))
    for name, fn in variants:
      start = time.perf_counter()
      compiled_steps[name] = jax.jit(fn).lower(state, setup_raw, tv, epoch).compile()
      compile_s[name] = time.perf_counter() - start
    # Fill the buffer so the meta step samples real entries.
    for _ in range(4):
      state, _ = compiled_steps["plain"](state, setup_raw, tv, epoch)
    medians = timed_interleaved(compiled_steps, (state, setup_raw, tv, epoch), repeats, warmup)
    entry = {name: {"ms": 1e3 * medians[name], "compile_s": compile_s[name],
                    "gflops": flops_of(compiled_steps[name]) / 1e9,
                    "xla_memory_mib": xla_memory_mib(compiled_steps[name])}
             for name in compiled_steps}
    entry["meta"] = entry[f"meta_{modes[0]}"]
    amortised = (5 * entry["plain"]["ms"] + entry["meta"]["ms"]) / 5
    entry["amortised_ms_meta_freq_5"] = amortised
    entry["images_per_s"] = batch / (amortised / 1e3)
    entry["meta_in_plain_steps"] = entry["meta"]["ms"] / entry["plain"]["ms"]
    result[source] = entry
  result["peak_memory_bytes"] = peak_memory_bytes()
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS) + ["all"])
  parser.add_argument("--student", default="vgg8")
  parser.add_argument("--teachers", default="vgg13,vgg13,vgg13")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--first_order", action="store_true")
  parser.add_argument("--modes", default="forward_over_reverse",
                      help="hypergradient modes to time, comma-separated (the first is used for the "
                           "amortised figure): forward_over_reverse, reverse")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  settings = ([PRESETS[p] for p in sorted(PRESETS)] if args.preset == "all"
              else [PRESETS[args.preset]] if args.preset else [(args.student, tuple(args.teachers.split(",")))])
  device = jax.devices()[0]
  peak = peak_flops()
  report = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "host": platform.node(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "peak_matmul_gflops": peak / 1e9,
            "results": []}
  print(f"device {report['device']}, measured peak {peak / 1e9:.1f} GFLOP/s (float32 matmul)")
  print("| setting | teachers | plain ms | meta ms | meta / plain | amortised ms (freq 5) | img/s | "
        "GFLOP/plain | GFLOP/meta | achieved GFLOP/s | % peak | compile s (plain+meta) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for student, teacher_archs in settings:
    modes = tuple(args.modes.split(","))
    r = benchmark(student, teacher_archs, args.batch, args.repeats, args.warmup,
                  first_order=args.first_order, modes=modes)
    report["results"].append(r)
    for source in ("precomputed", "online"):
      e = r[source]
      flops = (5 * e["plain"]["gflops"] + e["meta"]["gflops"]) / 5
      achieved = flops / (e["amortised_ms_meta_freq_5"] / 1e3)
      e["achieved_gflops"] = achieved
      label = teachers_label(teacher_archs)
      print(f"| {student} <- {label} | {source} | {e['plain']['ms']:.1f} | "
            f"{e['meta']['ms']:.1f} | {e['meta_in_plain_steps']:.2f} | {e['amortised_ms_meta_freq_5']:.1f} | "
            f"{e['images_per_s']:.0f} | {e['plain']['gflops']:.2f} | {e['meta']['gflops']:.2f} | "
            f"{achieved:.1f} | {100 * achieved * 1e9 / peak:.1f} | "
            f"{e['plain']['compile_s']:.1f}+{e['meta']['compile_s']:.1f} |")
      for mode in modes[1:]:
        other = e[f"meta_{mode}"]
        print(f"|   meta step with hypergradient={mode} | {source} | | {other['ms']:.1f} | "
              f"{other['ms'] / e['plain']['ms']:.2f} | | | | {other['gflops']:.2f} | | | "
              f"{other['compile_s']:.1f} |")
      memory = ", ".join(f"{name} {v['xla_memory_mib'].get('temp', float('nan')):.0f}"
                         for name, v in e.items() if name != "meta" and isinstance(v, dict) and "xla_memory_mib" in v)
      print(f"|   XLA temporaries (MiB): {memory} | | | | | | | | | | | |")
    print(f"peak process memory {r['peak_memory_bytes'] / 2**20:.0f} MiB")
  write_report(args.json, json.dumps(report, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
