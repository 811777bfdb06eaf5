"""Can the host keep an accelerator fed? The host's step rate against the roofline step rate.

    python experiments/host_ratio.py --overhead runs/overhead/r1/dispatch_overhead.json \
        --roofline runs/roofline_configs.json [--pipeline_batches_per_s 52.9] [--out FILE.md]

For every setting of ``--roofline`` (``accelerator_bench.py --configs --repeats 0``: the shipped
configs' default student and teachers, precomputed teachers, float32) and every device of
``accelerator_bench.ROOFLINE_DEVICES``: the roofline's amortised MMKD step (plain + meta / 5) as a
rate, and the rates at which the host can issue steps, measured on this CPU
(``dispatch_overhead.py``: the main thread's CPU time per MMKD step):
  * host-streamed: the slower of the main thread and the cache-joined input pipeline
    (``input_pipeline.py``; datasets cropped on the host are streamed whatever the placement);
  * device-resident with ``scan_steps``: the main thread alone.
A ratio >= 1 means the host cannot be what limits the run on that device. The paper's run
(240 epochs of CIFAR-100 at batch 64, the cifar100 settings) is predicted at max(roofline, host)
per step: with the device computing asynchronously the slower side sets the pace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accelerator_bench import META_FREQ, RUN_EPOCHS, RUN_STEPS_PER_EPOCH  # pylint: disable=wrong-import-position

# Datasets whose crops are cut on the host (data.resident.unsupported): streamed in any placement.
HOST_CROPPED = ("tinyimagenet", "finegrained")


def host_ms(overhead: dict, mode: str, method: str = "mmkd", replicas: int = 1) -> float:
  (row,) = [r for r in overhead["results"] if (r["mode"], r["method"], r["replicas"]) == (mode, method, replicas)]
  return row["host_cpu_ms_per_step"]


def host_costs(overhead: dict, pipeline_batches_per_s: float) -> tuple[float, float]:
  """Host ms per MMKD step: streamed (the slower of main thread and pipeline), device + scan."""
  return max(host_ms(overhead, "streamed"), 1e3 / pipeline_batches_per_s), host_ms(overhead, "resident+scan")


def rows(roofline: dict, overhead: dict, pipeline_batches_per_s: float) -> list[dict]:
  streamed, scanned = host_costs(overhead, pipeline_batches_per_s)
  out = []
  for entry in roofline["results"]:
    name = entry["setting"]
    resident_ok = name.split(":")[0] not in HOST_CROPPED
    best_host = scanned if resident_ok else streamed
    hours = (lambda ms: RUN_EPOCHS * RUN_STEPS_PER_EPOCH * ms / 3.6e6) if name.startswith("cifar100") else None
    for device, step in entry["roofline_ms"].items():
      device_ms = step["plain"] + step["meta"] / META_FREQ
      out.append({"config": name, "device": device, "roofline_ms": device_ms,
                  "streamed_ratio": device_ms / streamed,
                  "resident_ratio": device_ms / scanned if resident_ok else None,
                  "hours_streamed": hours and hours(max(device_ms, streamed)),
                  "hours_best": hours and hours(max(device_ms, best_host)),
                  "hours_roofline": hours and hours(device_ms)})
  return out


def markdown(table: list[dict], streamed_ms: float, scanned_ms: float) -> str:
  lines = [f"Host ms per MMKD step on this CPU: streamed {streamed_ms:.2f} (the slower of main thread and "
           f"pipeline), device-resident + scan {scanned_ms:.2f}.", "",
           "| config | device | roofline ms/step | ratio streamed | ratio resident + scan | "
           "CIFAR-100, 240 epochs x 782 steps (h): roofline / streamed / device + scan |",
           "|---|---|---|---|---|---|"]
  for r in table:
    resident = "— (host crops)" if r["resident_ratio"] is None else f"{r['resident_ratio']:.2f}"
    streamed = f"{r['streamed_ratio']:.2f}" + ("*" if r["resident_ratio"] is None else "")
    hours = ("—" if r["hours_roofline"] is None
             else f"{r['hours_roofline']:.2f} / {r['hours_streamed']:.2f} / {r['hours_best']:.2f}")
    lines.append(f"| {r['config']} | {r['device']} | {r['roofline_ms']:.2f} | {streamed} | {resident} | {hours} |")
  return "\n".join(lines + ["", "* with the cache-joined pipeline's rate; decoding and cropping the images on the "
                             "host (these datasets) is not measured here and can only be slower."])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--overhead", required=True, help="dispatch_overhead.py's JSON (R = 1, with mmkd)")
  parser.add_argument("--roofline", required=True, help="accelerator_bench.py --configs --repeats 0's JSON")
  parser.add_argument("--pipeline_batches_per_s", type=float, default=52.9,
                      help="the cache-joined input pipeline's rate (input_pipeline.py, RESULTS.md)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  with open(args.overhead) as f:
    overhead = json.load(f)
  with open(args.roofline) as f:
    roofline = json.load(f)
  table = rows(roofline, overhead, args.pipeline_batches_per_s)
  text = markdown(table, *host_costs(overhead, args.pipeline_batches_per_s))
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
