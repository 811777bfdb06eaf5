"""Command line entry point: flags, validation, mode dispatch.

    python -m mmkd_jax.main --config configs/digits.py --workdir runs/digits \\
        [--config.epochs=10 --config.method=aver ...]

``config.mode``: train_teacher (train the missing teachers), precompute (write the teacher
cache), distill (train the student), evaluate (test the best checkpoint), or pipeline (all of
them, skipping what already exists).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags

from mmkd_jax import checkpoint, parallel, train
from mmkd_jax import config as config_lib
from mmkd_jax.data import sources
from mmkd_jax.methods import METHODS
from mmkd_jax.registry import ConfigError, UnknownNameError
from mmkd_jax.teachers import cache as cache_lib
from mmkd_jax.teachers import lifecycle

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the summary.")


# The stages of each mode: train missing teachers, precompute their outputs, train the student.
_STAGES = {"train_teacher": {"teachers"}, "precompute": {"cache"}, "distill": {"student"},
           "evaluate": {"evaluate"}, "pipeline": {"teachers", "cache", "student"}}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs ``config.mode`` on ``workdir``; returns the summary (or evaluation) dict."""
  config = config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  stages = _STAGES[config.mode]
  if "teachers" in stages:
    lifecycle.train_missing_teachers(config)
  if stages <= {"teachers"}:
    return {}
  dataset = sources.open_dataset(config)
  needs_teachers = METHODS.get(config.method).needs_teachers
  loaded = lifecycle.load_teachers(config, dataset.spec) if needs_teachers else []
  if loaded and "cache" in stages and ("student" not in stages or config.teacher_source != "online"):
    lifecycle.precompute(config, loaded, dataset)
  if stages <= {"cache"}:
    return {}
  cache = lifecycle.open_cache(config, loaded, dataset)
  if "evaluate" in stages:
    return evaluate_checkpoint(config, workdir, loaded, cache)
  summary = train.train_and_evaluate(config, workdir, loaded, cache)
  summary.pop("state", None)
  print(json.dumps({k: v for k, v in summary.items() if k != "teachers"}, indent=2))
  return summary


def evaluate_checkpoint(config, workdir, loaded, cache) -> dict:
  """Test accuracy of the best (else latest) checkpoint in ``workdir``."""
  setup = train.build(config, loaded, cache)
  ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints, async_save=False)
  state = train.initial_state(setup)
  restored = ckpts.restore(state, "best") or ckpts.restore(state, "latest")
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir} to evaluate")
  state, _, step = restored
  result = train.evaluate(setup, parallel.replicate(state, setup.mesh), jax.jit(setup.steps.eval_step))
  print(f"checkpoint step {step}: test top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%, "
        f"loss {result['loss']:.4f}")
  return result


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """``jax.distributed.initialize`` from the config, else auto-detection.

  Explicit: ``--config.distributed.coordinator_address=host:port``, ``num_processes``,
  ``process_id``. Auto (``distributed.auto``): on TPU pod slices, SLURM jobs with several tasks,
  or when ``JAX_COORDINATOR_ADDRESS`` is set, JAX detects the cluster itself.
  """
  d = config.distributed
  if d.coordinator_address:
    jax.distributed.initialize(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                               process_id=d.process_id)
  elif d.auto and (os.environ.get("JAX_COORDINATOR_ADDRESS") or int(os.environ.get("SLURM_NTASKS", "1")) > 1
                   or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0):
    jax.distributed.initialize()


USER_ERRORS = (train.NonFiniteLossError, ConfigError, UnknownNameError, cache_lib.CacheMismatchError,
               FileNotFoundError, checkpoint.CheckpointError)


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  initialize_distributed(_CONFIG.value)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.ERROR)
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
