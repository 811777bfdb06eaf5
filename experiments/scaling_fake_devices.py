"""Step time of MMKD on 1, 2, 4, 8 fake CPU devices (XLA host platform device count).

    python experiments/scaling_fake_devices.py [--student resnet8 --teachers resnet14,resnet20,wrn_16_1]

On one CPU the "devices" share the same cores, so this shows the overhead of the sharded
program (partitioning, collectives), not a speed-up. Runs experiments/benchmark_step.py in a
subprocess per device count and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--student", default="resnet8")
  parser.add_argument("--teachers", default="resnet14,resnet20,wrn_16_1")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rows = []
  for n in map(int, args.devices.split(",")):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
      subprocess.run([sys.executable, os.path.join(HERE, "benchmark_step.py"), "--student", args.student,
                      "--teachers", args.teachers, "--batch", str(args.batch), "--repeats", str(args.repeats),
                      "--json", out.name], env=env, check=True, stdout=subprocess.DEVNULL)
      rows.append(json.load(open(out.name))["results"][0])
  print(f"{args.student} <- {args.teachers}, global batch {args.batch}, precomputed teachers, CPU")
  print("| devices | plain ms | meta ms | amortised ms (meta_freq 5) |")
  print("|---|---|---|---|")
  for r in rows:
    e = r["precomputed"]
    print(f"| {r['devices']} | {e['plain']['ms']:.1f} | {e['meta']['ms']:.1f} | {e['amortised_ms_meta_freq_5']:.1f} |")


if __name__ == "__main__":
  main()
