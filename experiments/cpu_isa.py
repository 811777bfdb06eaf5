"""Does pinning XLA:CPU's instruction set make runs identical across x86 machines, and at what cost?

    python experiments/cpu_isa.py [--isas default,AVX512,AVX2,SSE4_2] [--epochs 3] [--out DIR]

Trains the same student (digits, resnet8, no teachers, ``--config.epochs`` epochs) once per
``--xla_cpu_max_isa`` value, each in a fresh process, and reports each run's final test top-1,
the fingerprint of its final parameters (sha256 of every array) and its training seconds. Runs
whose fingerprints agree computed the same numbers bit for bit; a value that changes nothing
(an ISA the host lacks, or one XLA ignores) gives the default's fingerprint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(isa: str, epochs: int, workdir: str, data_dir: str) -> dict:
  env = dict(os.environ, TFDS_DATA_DIR=data_dir)
  env.pop("XLA_FLAGS", None)
  if isa != "default":
    env["XLA_FLAGS"] = f"--xla_cpu_max_isa={isa}"
  args = [sys.executable, "-m", "mmkd_jax.main", "--config", os.path.join(ROOT, "configs", "digits.py") + ":none",
          "--workdir", workdir, "--config.mode=distill", f"--config.epochs={epochs}",
          f"--config.lr_milestones=({epochs},)", "--config.async_checkpoints=False"]
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
  if done.returncode:
    raise SystemExit(done.stderr[-2000:])
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  probe = ("import sys, jax; from mmkd_jax import teachers; from mmkd_jax.evaluation import student; "
           "s = student.student_from_workdir(sys.argv[1], 'latest'); print(teachers.fingerprint(s.variables))")
  fingerprint = subprocess.run([sys.executable, "-c", probe, workdir], cwd=ROOT, env=env, capture_output=True,
                               text=True, check=True).stdout.strip().splitlines()[-1]
  return {"isa": isa, "final_top1": summary["final_top1"], "fingerprint": fingerprint,
          "train_seconds": round(summary["wall_seconds"], 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--isas", default="default,AVX512,AVX2,SSE4_2")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  root = args.out or tempfile.mkdtemp(prefix="cpu_isa_")
  rows = [run_once(isa, args.epochs, os.path.join(root, isa), os.path.join(root, "tfds"))
          for isa in args.isas.split(",")]
  print("| --xla_cpu_max_isa | final top-1 | final parameters (sha256) | train s |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['isa']} | {r['final_top1']:.2f} | {r['fingerprint']} | {r['train_seconds']} |")
  with open(os.path.join(root, "cpu_isa.json"), "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
