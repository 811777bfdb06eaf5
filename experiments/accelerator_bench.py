"""One-shot throughput benchmark for whatever backend is present (GPU, TPU or CPU).

    python experiments/accelerator_bench.py --all --out DIR   # the one accelerator command (< 8 min)
    python experiments/accelerator_bench.py --json runs/accel.json --markdown runs/accel.md
    python experiments/accelerator_bench.py --cpu          # small settings for a CPU (~3 min)

``--all`` first checks the device (``device_checks``: a float32 train and meta step against the
CPU, MMKD's float64 hypergradient against the original code's reference meta steps), then
measures the grid below for R = 1 / 4 / 8 with both input placements (``--placements``: batches
streamed from host arrays, one transfer and dispatch per step, or gathered from device-resident
arrays by the trainer's ``scan_steps`` stepper, one dispatch per meta cycle), and writes
accelerator_bench.json and accelerator_bench.md into DIR. It exits 1 when a check fails. On a
machine without an accelerator it runs the whole command on resnet8 <- 3 x resnet8 at batch 8
(``ALL_ON_CPU``: a check of the command, not a benchmark; ``--cpu`` for the CPU benchmark).

For vgg8 <- 3 x vgg13 and resnet8x4 <- 3 x resnet32x4 (CIFAR-100 shapes, batch 64, synthetic
data) it measures, for teachers precomputed and online, compute dtype float32 and bfloat16, and
R = 1 / 4 / 16 replicas (R independent students trained by one ``jax.vmap``-ed step (or
``lax.map``, --replica_loop), each
with its own parameters, optimiser and meta state, hard buffer and batch):
  * ms per plain step, per meta step (3-step look-ahead, exact hypergradient) and amortised at
    meta_freq 5, all for the R replicas together; images/s = R x batch / amortised time;
  * FLOPs and bytes accessed per step (XLA cost analysis), achieved FLOP/s against the device's
    peak (published figure where the device is known, else a measured matmul peak);
  * XLA's temporary memory per step and the device's peak memory;
  * the roofline prediction max(FLOPs / peak FLOP/s, bytes / bandwidth) of each step on an H100
    SXM, an H200 and a TPU v5e chip, from the same cost analysis (``ROOFLINE_DEVICES``), and the
    wall time of the paper's 240-epoch CIFAR-100 run it implies (``run_hours``).
``--repeats 0`` compiles and analyses only (the roofline of settings too slow to time here).
Medians of --repeats interleaved calls after warm-up; compile time excluded and reported.
Time-boxed: a setting is skipped (and said so) once --budget_s is spent.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import device_checks  # pylint: disable=wrong-import-position
from benchmark_step import (flops_of, peak_flops, peak_memory_bytes, synthetic_raw,  # pylint: disable=wrong-import-position
                            synthetic_steps, teacher_outputs, timed_interleaved, write_report, xla_memory_mib)

from mmkd_jax.training import dispatch  # pylint: disable=wrong-import-position
from mmkd_jax.training import steps as steps_lib
from mmkd_jax.training import replicas as replicas_lib  # pylint: disable=wrong-import-position
from mmkd_jax.data import resident  # pylint: disable=wrong-import-position

SETTINGS = {"vgg8": ("vgg8", ("vgg13",) * 3), "resnet8x4": ("resnet8x4", ("resnet32x4",) * 3)}
CPU_SETTINGS = {"resnet8": ("resnet8", ("resnet14",) * 3)}
# --all without an accelerator: a wiring run of the whole command (batch 8), not a benchmark.
ALL_ON_CPU = {"resnet8": ("resnet8", ("resnet8",) * 3)}
# The shipped configs' default settings (--configs): student, teachers, image shape, classes.
CONFIG_SETTINGS = {
    "cifar100": ("vgg8", ("vgg13",) * 3, (32, 32, 3), 100),
    "cifar100:resnet8x4,resnet32x4": ("resnet8x4", ("resnet32x4",) * 3, (32, 32, 3), 100),
    "digits": ("resnet8", ("resnet14", "resnet20", "wrn_16_1"), (32, 32, 3), 10),
    "fashion_mnist": ("resnet8", ("resnet20", "wrn_16_2", "vgg8"), (28, 28, 1), 10),
    "tinyimagenet": ("resnet8x4", ("resnet32x4",) * 3, (32, 32, 3), 200),
    "finegrained": ("ResNet18", ("ResNet34x4",) * 3, (224, 224, 3), 120),
}


def setting(table: dict, name: str) -> tuple:
  """(student, teachers, image shape, classes) of a setting (CIFAR-100 shapes unless it says)."""
  student, teachers, *shape_classes = table[name]
  return (student, teachers, *(shape_classes or ((32, 32, 3), 100)))

# Dense peak FLOP/s (float32 without tensor cores / bfloat16 tensor cores) and memory bandwidth.
# H100 SXM5 and H200: NVIDIA H100 / H200 Tensor Core GPU datasheets (FP32 67 TFLOP/s; BF16 dense
# 989 TFLOP/s, i.e. half the 1,979 "with sparsity"; HBM3 3.35 TB/s, H200 HBM3e 4.8 TB/s).
# TPU v5e: Google Cloud TPU v5e documentation (197 TFLOP/s bf16, 819 GB/s HBM2e; float32 matmuls
# run as multi-pass bf16 on the MXU, taken here as 1/3 of the bf16 peak).
ROOFLINE_DEVICES = {
    "H100 SXM": {"float32": 67e12, "bfloat16": 989e12, "bandwidth": 3.35e12},
    "H200": {"float32": 67e12, "bfloat16": 989e12, "bandwidth": 4.8e12},
    "TPU v5e": {"float32": 197e12 / 3, "bfloat16": 197e12, "bandwidth": 819e9},
}
_DEVICE_KINDS = {"H100": "H100 SXM", "H200": "H200", "TPU v5 lite": "TPU v5e", "TPU v5e": "TPU v5e"}


def bytes_of(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost.get("bytes accessed", float("nan"))) if cost else float("nan")


def known_device() -> str | None:
  kind = getattr(jax.devices()[0], "device_kind", "")
  return next((name for key, name in _DEVICE_KINDS.items() if key in kind), None)


def roofline_ms(flops: float, bytes_accessed: float, device: dict, dtype: str) -> float:
  """Lower bound on a step's time: compute-bound or bandwidth-bound, whichever is slower."""
  return 1e3 * max(flops / device[dtype], bytes_accessed / device["bandwidth"])


META_FREQ = 5  # a meta step every 5 training steps (the MMKD default)


def amortised(plain: float, meta: float) -> float:
  """Per training step, with a meta step every META_FREQ steps (times or FLOPs)."""
  return plain + meta / META_FREQ


# Input placement (--all): both draw batches from this many synthetic records held as the trainer
# holds them (uint8 images, float32 logits, bfloat16 feature maps); a dispatch of the resident
# stepper is one meta cycle (META_FREQ - 1 plain steps and a plain + meta step).
DATASET_ROWS = 1024
PLACEMENTS = ("streamed", "resident")


def synthetic_dataset(teachers, source: str, rows: int, num_classes: int, image_shape: tuple) -> dict:
  """Host arrays of ``rows`` training records, with their teachers' outputs when precomputed
  (feature maps in bfloat16, as the cache stores them)."""
  rng = np.random.default_rng(1)
  data = {"image": rng.integers(0, 256, (rows, *image_shape)).astype(np.uint8),
          "label": rng.integers(0, num_classes, rows).astype(np.int32)}
  if source == "precomputed":
    logits, feats = teacher_outputs(teachers, data["image"], chunk=256)
    data["teacher_logits"] = logits
    data["teacher_feat"] = tuple(f.astype(jnp.bfloat16) for f in feats)
  return data


def host_batch(data: dict, rows: np.ndarray) -> dict:
  """The stacked (R, B) batch of record positions ``rows``, formed on the host as the pipeline
  forms it (feature maps widened to float32 there)."""
  raw = {"image": data["image"][rows], "label": data["label"][rows], "index": rows.astype(np.int32),
         "replay": np.zeros(rows.shape, np.int32)}
  if "teacher_logits" in data:
    raw["teacher_logits"] = data["teacher_logits"][rows]
    raw["teacher_feat"] = tuple(f[rows].astype(np.float32) for f in data["teacher_feat"])
  return raw


def placement_ms(compiled: dict, teachers, source: str, stepped: dict, state, tv, epoch, batch: int,
                 num_classes: int, image_shape: tuple, replicas: int, placements, repeats: int, warmup: int) -> dict:
  """ms per training step over one meta cycle, the batches streamed from host arrays (one
  transfer and dispatch per step) or gathered from device-resident arrays (one dispatch per
  cycle, ``dispatch.chunk_function``: the trainer's scan_steps stepper), and the baseline
  ``device``: the streamed cycle's dispatches on a batch already on the device."""
  data = synthetic_dataset(teachers, source, DATASET_ROWS, num_classes, image_shape)
  order = np.stack([np.random.default_rng(k).permutation(DATASET_ROWS)[:META_FREQ * batch].reshape(META_FREQ, batch)
                    for k in range(replicas)]).astype(np.int32)

  def cycle(batch_of):
    s = state
    for k in range(META_FREQ):
      raw = batch_of(k)
      s, _ = compiled["plain"](s, raw, tv, epoch)
      if k == META_FREQ - 1:
        s, _ = compiled["meta"](s, raw, tv, epoch)
    return s

  on_device = jax.device_put(host_batch(data, order[:, 0]))

  arrays = resident.Arrays(jnp.asarray(data["image"]), jnp.asarray(data["label"]), jnp.asarray(0, jnp.int32))
  if "teacher_logits" in data:
    arrays = arrays.replace(teacher_logits=jnp.asarray(data["teacher_logits"]),
                            teacher_feat=tuple(jnp.asarray(f) for f in data["teacher_feat"]))
  rows, first = jnp.asarray(order), np.int32(0)
  start = time.perf_counter()
  pattern = (False,) * (META_FREQ - 1) + (True,)
  chunk = jax.jit(dispatch.chunk_function(stepped["plain"], stepped["meta"], True, None, pattern))
  chunk = chunk.lower(state, arrays, rows, first, tv, epoch, {}).compile()
  compile_s = time.perf_counter() - start
  # "device": the same dispatches on one batch already on the device, the baseline of both.
  cycles = {"device": lambda: cycle(lambda k: on_device),
            "streamed": lambda: cycle(lambda k: jax.device_put(host_batch(data, order[:, k]))),
            "resident": lambda: chunk(state, arrays, rows, first, tv, epoch, {})[0]}
  cycles = {name: cycles[name] for name in ("device", *placements)}
  medians = (timed_interleaved(cycles, (), repeats, warmup) if repeats
             else {name: float("nan") for name in cycles})
  return {**{name: 1e3 * t / META_FREQ for name, t in medians.items()}, "resident_compile_s": compile_s}


def measure(student: str, teacher_archs, batch: int, num_classes: int, source: str, dtype: str,
            replicas: int, repeats: int, warmup: int, overrides: dict | None = None,
            replica_loop: str = "vmap", placements: tuple[str, ...] = (), image_shape: tuple = (32, 32, 3)) -> dict:
  """Plain / meta / amortised step of ``replicas`` vmapped students; everything per call."""
  teachers, steps, config = synthetic_steps(student, teacher_archs, batch, num_classes, source, dtype, overrides,
                                            image_shape)
  teacher_vars = tuple(t.variables for t in teachers)
  # every replica its own batch (its own data order)
  raws = [synthetic_raw(batch, num_classes, seed=k, shape=image_shape) for k in range(replicas)]
  if source == "precomputed":
    logits, feats = teacher_outputs(teachers, np.concatenate([r["image"] for r in raws]), chunk=batch)
    raws = [dict(r, teacher_logits=logits[k * batch:(k + 1) * batch],
                 teacher_feat=tuple(f[k * batch:(k + 1) * batch] for f in feats)) for k, r in enumerate(raws)]
  states = [steps_lib.init_state(steps, raws[k], seed=k) for k in range(replicas)]
  state, raw = replicas_lib.stack(states), replicas_lib.stack([jax.tree.map(jnp.asarray, r) for r in raws])
  tv = teacher_vars if source == "online" else ()
  epoch = jnp.asarray(1, jnp.int32)
  fns = {"plain": steps.train_step, "meta": dataclasses.replace(steps, config=config).meta_step}
  compiled, compile_s, stepped = {}, {}, {}
  for name, fn in fns.items():
    start = time.perf_counter()
    stepped[name] = replicas_lib.freeze_on_nonfinite(fn, replica_loop)  # the trainer's own replica step
    compiled[name] = jax.jit(stepped[name]).lower(state, raw, tv, epoch).compile()
    compile_s[name] = time.perf_counter() - start
  if repeats:
    for _ in range(4):  # fill the hard buffers so the meta step samples real entries
      state, _ = compiled["plain"](state, raw, tv, epoch)
    medians = timed_interleaved(compiled, (state, raw, tv, epoch), repeats, warmup)
  else:  # cost analysis only (the roofline of settings too slow to time on this machine)
    medians = {name: float("nan") for name in compiled}
  placed = {}
  if placements:
    placed = placement_ms(compiled, teachers, source, stepped, state, tv, epoch,
                          batch, num_classes, image_shape, replicas, placements, repeats, warmup)
  entry = {"student": student, "teachers": list(teacher_archs), "image_shape": list(image_shape),
           "classes": num_classes, "batch": batch, "source": source,
           "dtype": dtype, "replicas": replicas, "replica_loop": replicas_lib.loop_kind(replica_loop)}
  # XLA's cost analysis counts a while loop's body once: lax.map's R iterations are R bodies.
  loop_trips = replicas if entry["replica_loop"] == "map" else 1
  for name in compiled:
    entry[name] = {"ms": 1e3 * medians[name], "compile_s": compile_s[name],
                   "gflops": loop_trips * flops_of(compiled[name]) / 1e9,
                   "gbytes": loop_trips * bytes_of(compiled[name]) / 1e9,
                   "xla_temp_mib": xla_memory_mib(compiled[name]).get("temp", float("nan"))}
  entry["amortised_ms"] = amortised(entry["plain"]["ms"], entry["meta"]["ms"])
  entry["images_per_s"] = replicas * batch / (entry["amortised_ms"] / 1e3)
  entry["amortised_gflops"] = amortised(entry["plain"]["gflops"], entry["meta"]["gflops"])
  entry["achieved_gflops_per_s"] = entry["amortised_gflops"] / (entry["amortised_ms"] / 1e3)
  entry["roofline_ms"] = {
      device: {name: roofline_ms(1e9 * entry[name]["gflops"], 1e9 * entry[name]["gbytes"], spec_, dtype)
               for name in ("plain", "meta")}
      for device, spec_ in ROOFLINE_DEVICES.items()}
  entry["roofline_run_hours"] = {device: run_hours(r["plain"], r["meta"]) for device, r in entry["roofline_ms"].items()}
  entry["placement_ms"] = placed
  return entry


# The paper's run: CIFAR-100 (50,000 training images) for 240 epochs at batch 64.
RUN_EPOCHS, RUN_STEPS_PER_EPOCH = 240, -(-50_000 // 64)


def run_hours(plain_ms: float, meta_ms: float) -> float:
  """Wall time of the paper's 240-epoch CIFAR-100 run at the given step times (evaluation and
  input pipeline excluded)."""
  return RUN_EPOCHS * RUN_STEPS_PER_EPOCH * amortised(plain_ms, meta_ms) / 3.6e6


def markdown(report: dict) -> str:
  peak = report["peak_gflops"]
  lines = [f"Device: {report['device']} ({report['peak_source']} peak: "
           f"{', '.join(f'{k} {v / 1e3:.1f} TFLOP/s' for k, v in peak.items())}); jax {report['jax']}.", "",
           "| setting | teachers | dtype | R (loop) | plain ms | meta ms | meta/plain | amortised ms | img/s | "
           "per-replica ms | GFLOP/plain | achieved GFLOP/s | % peak | XLA temp MiB (plain/meta) | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for e in report["results"]:
    pct = 100 * e["achieved_gflops_per_s"] / peak[e["dtype"]]
    lines.append(
        f"| {e['student']} <- {len(e['teachers'])} x {e['teachers'][0]} | {e['source']} | {e['dtype']} | "
        f"{e['replicas']} ({e['replica_loop']}) | {e['plain']['ms']:.1f} | {e['meta']['ms']:.1f} | {e['meta']['ms'] / e['plain']['ms']:.2f} | "
        f"{e['amortised_ms']:.1f} | {e['images_per_s']:.0f} | {e['amortised_ms'] / e['replicas']:.1f} | "
        f"{e['plain']['gflops']:.2f} | {e['achieved_gflops_per_s']:.0f} | {pct:.1f} | "
        f"{e['plain']['xla_temp_mib']:.0f}/{e['meta']['xla_temp_mib']:.0f} | "
        f"{e['plain']['compile_s']:.0f}+{e['meta']['compile_s']:.0f} |")
  lines += ["", f"Peak device memory: {report['peak_memory_mib']:.0f} MiB.", "",
            "Roofline prediction from the cost analysis above, ms per plain / meta step "
            "(max of FLOPs / peak and bytes / bandwidth):", "",
            "| setting | teachers | dtype | R | " + " | ".join(ROOFLINE_DEVICES) + " |",
            "|---|---|---|---|" + "---|" * len(ROOFLINE_DEVICES)]
  for e in report["results"]:
    cells = " | ".join(f"{r['plain']:.2f} / {r['meta']:.2f}" for r in e["roofline_ms"].values())
    lines.append(f"| {e['student']} <- {len(e['teachers'])} x {e['teachers'][0]} | {e['source']} | {e['dtype']} | "
                 f"{e['replicas']} | {cells} |")
  lines += ["", f"Predicted wall time of the paper's run ({RUN_EPOCHS} epochs x {RUN_STEPS_PER_EPOCH} steps at batch 64, "
            f"a meta step every {META_FREQ}) at the roofline step times, hours for all R students together"
            " (this device: at its measured step times, nan with --repeats 0):", "",
            "| setting | teachers | dtype | R | " + " | ".join(ROOFLINE_DEVICES) + " | this device |",
            "|---|---|---|---|" + "---|" * (len(ROOFLINE_DEVICES) + 1)]
  for e in report["results"]:
    cells = " | ".join(f"{h:.2f}" for h in e["roofline_run_hours"].values())
    lines.append(f"| {e['student']} <- {len(e['teachers'])} x {e['teachers'][0]} | {e['source']} | {e['dtype']} | "
                 f"{e['replicas']} | {cells} | {run_hours(e['plain']['ms'], e['meta']['ms']):.2f} |")
  placed = [e for e in report["results"] if e.get("placement_ms")]
  if placed:
    lines += ["", f"Input placement, ms per training step over a meta cycle ({META_FREQ - 1} plain steps, then a "
              "plain and a meta step; device only: one step per dispatch on a batch already on the device; "
              "streamed: each batch formed on the host and sent; resident: gathered on the device, "
              f"{META_FREQ} steps per dispatch):", "",
              "| setting | teachers | dtype | R | device only | streamed | resident | streamed - device / resident - device |",
              "|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for e in placed:
      p = e["placement_ms"]
      lines.append(f"| {e['student']} <- {len(e['teachers'])} x {e['teachers'][0]} | {e['source']} | {e['dtype']} | "
                   f"{e['replicas']} | {p['device']:.2f} | {p.get('streamed', nan):.2f} | {p.get('resident', nan):.2f} | "
                   f"{p.get('streamed', nan) - p['device']:+.2f} / {p.get('resident', nan) - p['device']:+.2f} |")
  if report["skipped"]:
    lines += ["", "Skipped (time budget spent): " + "; ".join(report["skipped"])]
  if "step_against_cpu" in report:
    lines = device_checks.markdown(report["step_against_cpu"], report["hypergradient"]) + lines
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--all", action="store_true",
                      help="the one accelerator command: the device checks, then R = 1,4,8 x dtypes x sources with "
                           "streamed and resident placement; JSON and Markdown into --out (CPU: the small settings)")
  parser.add_argument("--out", default="", help="folder for accelerator_bench.json and accelerator_bench.md")
  parser.add_argument("--vectors", default="", help="folder of hypergrad_*.npz for the device's hypergradient "
                      "check (default: device_checks.default_vectors())")
  parser.add_argument("--cpu", action="store_true", help="small settings (resnet8 <- 3 x resnet14, batch 16)")
  parser.add_argument("--settings", default="", help="comma-separated names of SETTINGS (default: all)")
  parser.add_argument("--configs", action="store_true", help="the shipped configs' settings (CONFIG_SETTINGS)")
  parser.add_argument("--replicas", default="", help="comma-separated R values (default 1,4,16; --all 1,4,8; --cpu: 1,4)")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--replica_loop", default="vmap", choices=("auto", "vmap", "map"),
                      help="how one program steps the replicas (the trainer's config.replica_loop)")
  parser.add_argument("--sources", default="precomputed,online")
  parser.add_argument("--placements", default="", help="comma-separated of " + ",".join(PLACEMENTS)
                      + " (default: none; --all: both)")
  parser.add_argument("--batch", type=int, default=0, help="default 64 (--cpu: 16)")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per step (0: cost analysis only)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--budget_s", type=float, default=0.0,
                      help="stop starting new measurements after this (default 300; --all: 420 minus the checks' time)")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="config overrides, e.g. meta.lookahead_matching_steps=1 (values parsed as Python literals)")
  parser.add_argument("--json", default="")
  parser.add_argument("--markdown", default="")
  args = parser.parse_args(argv)
  overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
  device = jax.devices()[0]
  wiring = args.all and device.platform == "cpu" and not (args.cpu or args.configs or args.settings)
  small = args.cpu or wiring
  table = CONFIG_SETTINGS if args.configs else ALL_ON_CPU if wiring else CPU_SETTINGS if small else SETTINGS
  names = args.settings.split(",") if args.settings else list(table)
  default_replicas = "1,4,8" if args.all else ("1,4" if small else "1,4,16")
  replicas = [int(r) for r in (args.replicas or default_replicas).split(",")]
  placements = tuple(p for p in (args.placements or (",".join(PLACEMENTS) if args.all else "")).split(",") if p)
  batch = args.batch or (8 if wiring else 16 if small else 64)
  budget_s = args.budget_s or 300.0
  json_path = args.json or (os.path.join(args.out, "accelerator_bench.json") if args.out else "")
  markdown_path = args.markdown or (os.path.join(args.out, "accelerator_bench.md") if args.out else "")
  known = known_device()
  if known:
    peak = {k: ROOFLINE_DEVICES[known][k] / 1e9 for k in ("float32", "bfloat16")}
    peak_source = f"published {known}"
  else:
    measured = peak_flops() / 1e9
    peak = {"float32": measured, "bfloat16": measured}
    peak_source = "measured float32 matmul"
  report = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')} x {len(jax.devices())}",
            "jax": jax.__version__, "overrides": overrides, "peak_gflops": peak, "peak_source": peak_source, "results": [],
            "skipped": []}
  start = time.perf_counter()
  if args.all:
    report["step_against_cpu"] = device_checks.step_against_cpu(batch=min(batch, 16), overrides=overrides)
    report["hypergradient"] = device_checks.hypergradient_on_device(args.vectors or device_checks.default_vectors())
    report["checks_s"] = time.perf_counter() - start
    if not args.budget_s:  # the whole command within ~8 minutes: rows start up to 7 minutes in
      budget_s = max(60.0, 420.0 - report["checks_s"])
    print("\n".join(device_checks.markdown(report["step_against_cpu"], report["hypergradient"])), flush=True)
  grid_start = time.perf_counter()
  for source in args.sources.split(","):
    for name in names:
      student, teacher_archs, image_shape, classes = setting(table, name)
      for dtype in args.dtypes.split(","):
        for r in replicas:
          label = f"{name} {source} {dtype} R={r}"
          if time.perf_counter() - grid_start > budget_s:
            report["skipped"].append(label)
            continue
          entry = measure(student, teacher_archs, batch, classes, source, dtype, r, args.repeats, args.warmup,
                          overrides, args.replica_loop, placements, image_shape)
          entry["setting"] = name
          report["results"].append(entry)
          print(f"{label}: plain {entry['plain']['ms']:.1f} ms, meta {entry['meta']['ms']:.1f} ms, "
                f"{entry['images_per_s']:.0f} img/s"
                + "".join(f", {p} {entry['placement_ms'][p]:.1f} ms/step" for p in placements), flush=True)
  report["peak_memory_mib"] = peak_memory_bytes() / 2**20
  report["wall_s"] = time.perf_counter() - start
  text = markdown(report)
  print(text)
  write_report(json_path, json.dumps(report, indent=2))
  write_report(markdown_path, text + "\n")
  checks = [report[k]["ok"] for k in ("step_against_cpu", "hypergradient") if k in report]
  return 0 if all(checks) else 1


if __name__ == "__main__":
  sys.exit(main())
