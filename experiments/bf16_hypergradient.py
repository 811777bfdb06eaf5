"""How far is a bfloat16 meta step from the float32 one? Cosine of the hypergradients.

    python experiments/bf16_hypergradient.py --config configs/digits.py --warm_steps 40 \
        --json runs/bf16_hypergradient.json

Builds the config's MMKD run twice (``dtype`` float32 and bfloat16: same seed, same initial
parameters), trains ``--warm_steps`` plain float32 steps so the state is a real mid-training one,
then computes the meta step's hypergradient from that same state and the same hard-buffer batch
in both dtypes, on ``--batches`` different batches. Reports, per meta network and overall, the
cosine similarity and the relative norm difference; and the outer losses. Needs the config's
teachers (trained by ``make run`` for digits) and their cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_step import write_report  # pylint: disable=wrong-import-position

from mmkd_jax import config as config_lib  # pylint: disable=wrong-import-position
from mmkd_jax.training import parallel  # pylint: disable=wrong-import-position
from mmkd_jax.training import setup as train
from mmkd_jax.teachers import stages as teacher_stages  # pylint: disable=wrong-import-position


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def _epochs(setup):
  """Training batches over as many epochs as asked for (digits has 22 batches per epoch)."""
  for epoch in itertools.count():
    yield from train.train_batches(setup, epoch)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--warm_steps", type=int, default=40)
  parser.add_argument("--batches", type=int, default=3)
  parser.add_argument("--set", action="append", default=[])
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  base = config_lib.load(args.config, "mmkd", args.set)
  setups, loaded = {}, None
  for dtype in ("float32", "bfloat16"):
    c = config_lib.validate(config_lib.set_fields(base.copy_and_resolve_references(), {"dtype": dtype}))
    loaded = loaded or teacher_stages.load_teachers(c)
    setups[dtype] = train.build(c, loaded, teacher_stages.open_cache(c, loaded))
  ref = setups["float32"]
  state = parallel.copy_to_devices(train.initial_state(ref), ref.mesh)
  train_fn = jax.jit(ref.steps.train_step)
  epoch = jnp.asarray(0, jnp.int32)
  batches = _epochs(ref)
  for _ in range(args.warm_steps):
    state, _ = train_fn(state, parallel.shard_batch(next(batches), ref.mesh), (), epoch)
  hyper = {dtype: jax.jit(s.steps.hypergradient) for dtype, s in setups.items()}
  rows = []
  for b in range(args.batches):
    raw = parallel.shard_batch(next(batches), ref.mesh)
    state, _ = train_fn(state, raw, (), epoch)  # also refreshes the hard buffer
    out = {dtype: jax.device_get(fn(state, raw, (), epoch)[:2]) for dtype, fn in hyper.items()}
    (loss32, g32), (loss16, g16) = out["float32"], out["bfloat16"]
    row = {"batch": b, "outer_loss": {"float32": float(loss32), "bfloat16": float(loss16)},
           "cosine": {"all": cosine(_flat(g32), _flat(g16))},
           "relative_norm_difference": {"all": float(np.linalg.norm(_flat(g16) - _flat(g32)) / np.linalg.norm(_flat(g32)))}}
    for name in g32:
      row["cosine"][name] = cosine(_flat(g32[name]), _flat(g16[name]))
      row["relative_norm_difference"][name] = float(np.linalg.norm(_flat(g16[name]) - _flat(g32[name]))
                                                    / max(np.linalg.norm(_flat(g32[name])), 1e-300))
    rows.append(row)
    print(json.dumps(row), flush=True)
  report = {"config": args.config, "overrides": args.set, "warm_steps": args.warm_steps, "rows": rows,
            "device": str(jax.devices()[0])}
  write_report(args.json, json.dumps(report, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
