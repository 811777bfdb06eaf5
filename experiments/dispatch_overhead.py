"""What the host spends per training step: host-streamed batches vs device-resident data vs
device-resident data with several steps per dispatch (config.data_placement, config.scan_steps).

A setting where the step is small enough for the overhead to show (digits, resnet8, batch 64),
AVER and MMKD, one run and R replicas. Each mode trains through the real loop (loop.run_epoch over
training.run.open_program's program; evaluation excluded); the first epoch (compilation) is discarded and the
median over the following epochs is reported: steps/s and the main thread's CPU seconds per step
(Python, dispatch and, when streaming, joining the batches; grain's reader threads and XLA's
compute threads excluded), with the process's CPU seconds per step beside it.

  python experiments/dispatch_overhead.py --methods aver,mmkd --replicas 1,4 --epochs 4 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmkd_jax import config as config_lib  # noqa: E402
from mmkd_jax.runs import stop as stops  # noqa: E402
from mmkd_jax.training import loop
from mmkd_jax.training import run as run_lib
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.data import sources  # noqa: E402

MODES = {"streamed": {}, "resident": {"data_placement": "device"},
         "resident+scan": {"data_placement": "device", "scan_steps": 10}}


def _program(config, workdir):
  config = config_lib.validate(config)
  teacher_stages.train_missing_teachers(config)
  loaded = teacher_stages.load_teachers(config)
  if config.teacher_source == "precomputed":
    teacher_stages.precompute(config, loaded, sources.open_dataset(config))
  return run_lib.open_members(config, workdir, loaded, teacher_stages.open_cache(config, loaded), quiet=True)


def measure(method: str, replica_count: int, mode: str, epochs: int, teacher_dir: str, root: str) -> dict:
  overrides = {"method": method, "teacher_dir": teacher_dir, "epochs": epochs + 1, "batch_size": 64,
               "eval_batch_size": 64, "log_every": 10, "num_replays": 2, **MODES[mode]}
  if replica_count > 1:
    overrides["replicas"] = ",".join(str(s) for s in range(replica_count))
  config = config_lib.load(os.path.join(os.path.dirname(__file__), "..", "configs", "digits.py"), "smoke", overrides)
  workdir = os.path.join(root, f"{method}_{replica_count}_{mode}")
  program, members = _program(config, workdir)
  spe = members[0].setup.steps_per_epoch
  rows = []
  with stops.StopRequest() as stop:
    for epoch in range(epochs + 1):
      wall, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
      loop.run_epoch(program, members, epoch, 0, stop)
      jax.block_until_ready(program.state)
      rows.append({"steps_per_s": spe / (time.perf_counter() - wall),
                   "host_cpu_ms_per_step": 1000 * (time.thread_time() - thread) / spe,
                   "process_cpu_ms_per_step": 1000 * (time.process_time() - process) / spe})
  program.close()
  for m in members:
    m.close()
  timed = rows[1:]
  return {"method": method, "replicas": replica_count, "mode": mode, "steps_per_epoch": spe,
          **{k: statistics.median(r[k] for r in timed) for k in timed[0]}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--methods", default="aver,mmkd")
  parser.add_argument("--replicas", default="1,4")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
  parser.add_argument("--teacher_dir", default="runs/teachers")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  results = []
  with tempfile.TemporaryDirectory() as root:
    for method in args.methods.split(","):
      for count in (int(r) for r in args.replicas.split(",")):
        for mode in args.modes.split(","):
          results.append(measure(method, count, mode, args.epochs, args.teacher_dir, root))
          r = results[-1]
          print(f"{method:5s} R={count} {mode:14s} {r['steps_per_s']:7.2f} steps/s, host "
                f"{r['host_cpu_ms_per_step']:6.2f} ms/step (process {r['process_cpu_ms_per_step']:7.1f})", flush=True)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "dispatch_overhead.json"), "w") as f:
      json.dump({"device": str(jax.devices()[0]), "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
