"""Seconds from a stop signal to the command's exit, and the training throughput with the host's
run-ahead bounded (``loop.MAX_IN_FLIGHT`` = 2) and unbounded, through the real CLI.

Two settings, each with random teachers given as explicit ``.npz`` checkpoints (no teacher
training; their values do not matter for time):

* ``digits``: configs/digits.py's MMKD (resnet8 <- resnet14, resnet20, wrn_16_1), precomputed
  teachers, batch 64: a step of ~0.1 s on a 2-core CPU.
* ``cifar``: the CIFAR-size step, resnet8x4 <- 3 x resnet32x4, MMKD, teachers online, 32x32x3
  images (the digits images, which the dataset serves at 32x32x3), batch 64: seconds per step.

Latency: each repeat starts the command, waits until its first training window is logged
(``metrics.jsonl``; compilation is over), sleeps a random share of a step, sends SIGTERM and
measures until the process exits; the stop line's step against the last logged one is recorded.
Throughput: the images/s of epochs after the first (compilation) in runs with the bound and with
it lifted (``MAX_IN_FLIGHT`` set huge in the process), median over epochs.

    python experiments/stop_latency.py --settings digits,cifar --repeats 3 --out experiments/results/stop_latency
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmkd_jax.models import get_model  # noqa: E402
from mmkd_jax.teachers import convert  # noqa: E402

SETTINGS = {
    "digits": {"student": "resnet8", "teachers": ("resnet14", "resnet20", "wrn_16_1"), "source": "precomputed",
               "steps_per_window": 2},
    "cifar": {"student": "resnet8x4", "teachers": ("resnet32x4",) * 3, "source": "online", "steps_per_window": 1},
}
# The command run by the unbounded variant: the CLI with the run-ahead bound lifted.
UNBOUNDED = "import sys; from mmkd_jax import main; from mmkd_jax.training import loop; loop.MAX_IN_FLIGHT = 10 ** 9; sys.argv[0] = 'mmkd'; main.cli()"


def _teachers(setting: dict, directory: str) -> list[str]:
  """Random-initialised teachers as .npz state_dicts (explicit checkpoints: nothing is trained)."""
  paths = []
  for i, arch in enumerate(setting["teachers"]):
    path = os.path.join(directory, f"{arch}_{i}.npz")
    if not os.path.exists(path):
      variables = get_model(arch, 10).init(jax.random.key(i), jnp.zeros((1, 32, 32, 3)))
      np.savez(path, **convert.flax_to_torch(variables))
    paths.append(path)
  return paths


def _args(setting: dict, teachers: list[str], workdir: str, teacher_dir: str, epochs: int) -> list[str]:
  args = ["--config", os.path.join(ROOT, "configs", "digits.py"), "--workdir", workdir,
          f"--config.teacher_dir={teacher_dir}", f"--config.student={setting['student']}",
          f"--config.teacher_source={setting['source']}", f"--config.epochs={epochs}", "--config.lr_milestones=(100,)",
          f"--config.log_every={setting['steps_per_window']}", "--config.num_replays=2"]
  for i, (arch, path) in enumerate(zip(setting["teachers"], teachers)):
    args += [f"--config.teachers[{i}].arch={arch}", f"--config.teachers[{i}].checkpoint={path}"]
  return args


def _logged_steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)["step"] for line in f if '"train/loss"' in line and '"epoch"' not in line]


def latency(setting: dict, teachers: list[str], root: str, env: dict, rng: random.Random, repeat: int) -> dict:
  """One SIGTERM at a random moment of the first epoch's steady state."""
  workdir = os.path.join(root, f"latency{repeat}")
  proc = subprocess.Popen([sys.executable, "-m", "mmkd_jax.main",
                           *_args(setting, teachers, workdir, os.path.join(root, "teachers"), 2)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  while not _logged_steps(workdir) and proc.poll() is None:
    time.sleep(0.05)
  first_logged = time.monotonic()
  while len(_logged_steps(workdir)) < 2 and proc.poll() is None:  # the time of a window in the steady state
    time.sleep(0.02)
  window = time.monotonic() - first_logged
  time.sleep(rng.uniform(0.0, window))
  logged = _logged_steps(workdir)[-1]
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=1800)
  seconds = time.monotonic() - sent
  stop = re.search(r"stopped by SIGTERM .* at step (\d+)", out)
  return {"seconds_to_exit": round(seconds, 2), "window_seconds": round(window, 3),
          "steps_per_window": setting["steps_per_window"], "last_logged_step_at_signal": logged,
          "stopped_at_step": int(stop.group(1)) if stop else None, "exit_code": proc.returncode}


def throughput(setting: dict, teachers: list[str], root: str, env: dict, bounded: bool, epochs: int) -> dict:
  workdir = os.path.join(root, f"throughput_{'bounded' if bounded else 'unbounded'}")
  program = ["-m", "mmkd_jax.main"] if bounded else ["-c", UNBOUNDED]
  done = subprocess.run([sys.executable, *program, *_args(setting, teachers, workdir, os.path.join(root, "teachers"),
                                                          epochs)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=7200)
  if done.returncode != 0:
    raise RuntimeError(done.stderr[-2000:])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [r["train/images_per_s"] for r in map(json.loads, f) if "epoch" in r]
  return {"images_per_s_by_epoch": [round(r, 1) for r in rates], "median_after_first": round(statistics.median(rates[1:]), 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--settings", default="digits,cifar")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=3, help="epochs of each throughput run (the first is dropped)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  rng = random.Random(args.seed)
  results = {"host": os.uname().nodename, "cpus": os.cpu_count(), "max_in_flight": 2}
  for name in args.settings.split(","):
    setting = SETTINGS[name]
    root = tempfile.mkdtemp(prefix=f"stop_latency_{name}_")
    env = dict(os.environ, TFDS_DATA_DIR=os.path.join(root, "tfds"), PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=os.path.join(root, "xla_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    teachers = _teachers(setting, root)
    entry = {"throughput_bounded": throughput(setting, teachers, root, env, True, args.epochs),
             "throughput_unbounded": throughput(setting, teachers, root, env, False, args.epochs),
             "latency": [latency(setting, teachers, root, env, rng, k) for k in range(args.repeats)]}
    results[name] = entry
    print(name, json.dumps(entry), flush=True)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stop_latency.json"), "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
