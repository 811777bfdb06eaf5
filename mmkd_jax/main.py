"""Command line entry point: flags, validation, mode dispatch.

    python -m mmkd_jax.main --config configs/digits.py --workdir runs/digits \\
        [--config.epochs=10 --config.method=aver ...]

``config.mode``: train_teacher (train the missing teachers), precompute (write the teacher
cache), distill (train the student), evaluate (test the best checkpoint's student; no teachers
needed), export (write the student out: orbax, .npz, .pth), or pipeline (teachers, cache and
student, skipping what already exists).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NamedTuple

from absl import app, flags, logging
import jax
import ml_collections
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.config import show as show_config
from mmkd_jax.config import replicas as replica_spec
from mmkd_jax.data import resident, sources
from mmkd_jax.errors import ConfigError, UnknownNameError
from mmkd_jax.evaluation import student as student_lib
from mmkd_jax.methods import METHODS
from mmkd_jax.runs import checkpoint, plots, progress, storage
from mmkd_jax.runs import identity as run_identity
from mmkd_jax.runs import lock as workdir_lock
from mmkd_jax.runs import stop as stops
from mmkd_jax.runs import table as runs_table
from mmkd_jax.teachers import cache as cache_lib
from mmkd_jax.teachers import convert
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.training import compilation
from mmkd_jax.training import run as run_lib
from mmkd_jax.training.loop import DivergedError, NonFiniteLossError

flags.DEFINE_string("config", None, "A config file (configs/digits.py[:arg]), a shipped config by name, or a "
                    "run's config.json; --config.FIELD=VALUE sets a field.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the summary.")


# The stages of each mode: train missing teachers, precompute their outputs, train the student.
_STAGES = {"train_teacher": {"teachers"}, "precompute": {"cache"}, "distill": {"student"},
           "evaluate": {"evaluate"}, "export": {"export"}, "show_config": set(),
           "pipeline": {"teachers", "cache", "student"}}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs ``config.mode`` on ``workdir``; returns the summary (or evaluation) dict.

  Everything that can refuse the command is checked before the first write: the config, the
  work directory (its checkpoints must belong to this run), teachers trained with other settings,
  the dataset (prepared, of images). Then the work directory is locked for the whole command.
  """
  config = config_lib.validate(config)
  if config.mode == "show_config":
    print(show_config.describe(config))
    return {}
  if storage.is_file(workdir):
    raise ConfigError(f"--workdir {workdir} is a file, not a directory")
  stages = _STAGES[config.mode]
  if stages & {"evaluate", "export"}:
    if replica_spec.replica_seeds(config):
      raise ConfigError(f"config.replicas: mode={config.mode} reads one run; point --workdir at a replica's "
                        f"directory (e.g. {storage.join(workdir, 'seed0')}) and drop --config.replicas")
    if not storage.is_dir(workdir):
      raise FileNotFoundError(f"--workdir {workdir} does not exist: mode={config.mode} reads the work directory "
                              "of a finished run (or one with checkpoints)")
    if "evaluate" in stages:
      return student_lib.evaluate_workdir(config, workdir)
    written = student_lib.export_student(workdir, config.export_dir or storage.join(workdir, "export"))
    print("exported the student: " + ", ".join(f"{k} {v}" for k, v in written.items()))
    return written
  plans = config_lib.member_configs(config)  # each run the command trains, its config resolved once
  if "student" in stages:
    run_identity.check_workdir(plans, workdir)
  teacher_stages.check_trained_teachers(config)
  dataset = sources.open_dataset(config)  # once per command
  if "student" in stages:
    resident.check_placement(config, dataset.spec)
  if "student" in stages and config.student_checkpoint:
    convert.check_pretrained(config.student, dataset.spec.num_classes, config.student_checkpoint,
                             dataset.spec.image_shape, config.trust_pickle, config.checkpoint_head)
  # Without the teacher stage the teachers must be there already (and, without the cache stage,
  # their cache): read them now, so that a missing one is refused before anything is written.
  loaded = cache = None
  if "teachers" not in stages and stages & {"cache", "student"}:
    loaded = teacher_stages.load_teachers(config, dataset.spec) if METHODS.get(config.method).needs_teachers else []
    if "cache" not in stages:
      cache = teacher_stages.open_cache(config, loaded, dataset)
  storage.makedirs(workdir)
  with stops.StopRequest() as stop, workdir_lock.WorkdirLock(workdir):
    return _run_stages(config, plans, workdir, stages, dataset, loaded, cache, stop)


def _run_stages(config: ml_collections.ConfigDict, plans: list, workdir: str, stages: set, dataset: sources.Dataset,
                loaded: list | None, cache, stop: stops.StopRequest) -> dict:
  if "teachers" in stages:
    teacher_stages.train_missing_teachers(config, stop)
  if stages <= {"teachers"}:
    return {}
  stops.raise_if_stopped("after training the teachers")
  needs_teachers = METHODS.get(config.method).needs_teachers
  if loaded is None:
    loaded = teacher_stages.load_teachers(config, dataset.spec) if needs_teachers else []
  if loaded and "cache" in stages and ("student" not in stages or config.teacher_source != "online"):
    teacher_stages.precompute(config, loaded, dataset)
  if stages <= {"cache"}:
    return {}
  stops.raise_if_stopped("after precomputing the teacher cache")
  if cache is None:
    cache = teacher_stages.open_cache(config, loaded, dataset)
  progress.stage("student", f"{config.method}: {config.student}"
                 + (f" <- {', '.join(t.name for t in loaded)}" if loaded else "")
                 + f" on {config.dataset}, {config.epochs} epochs"
                 + (f", {len(plans)} replicas" if len(plans) > 1 else "") + f" -> {storage.absolute(workdir)}")
  if config.smoke:
    print(SMOKE_NOTE, flush=True)
  result = run_lib.train_members(config, workdir, loaded, cache, dataset=dataset, stop=stop)
  summaries = result["summaries"]
  if result["preempted"]:
    step = int(np.max(jax.device_get(result["state"].step)))
    raise stops.stop(f"while training the student at step {step} of {summaries[0]['steps_total']} "
                     f"(checkpoints saved in {storage.absolute(workdir)})")
  for summary, (name, _) in zip(summaries, plans):
    split = summary["eval_split"].split("[")[0]
    result_text = (f"{split} top-1 {summary['final_top1']:.2f}% after epoch {summary['epochs_completed']} (best "
                   f"{summary['best_top1']:.2f}% @ {summary['best_epoch']}, chosen on {summary['best_chosen_on']})"
                   if summary["status"] == "finished" else summary["status"])
    print(f"student{f' {name}' if name else ''}: {result_text}; {progress.clock(summary['stage_seconds']['student'])} "
          "of training" + (" (smoke: a wiring check)" if config.smoke else ""))
  where = {"summary": "summary.json", "resolved config": "config.json", "metrics": "metrics.jsonl",
           "TensorBoard": "tensorboard/", "checkpoints": "checkpoints/ (latest) and best/"}
  runs_where = f"{storage.absolute(workdir)}/<member>/ (each an ordinary run directory)" if len(plans) > 1 else \
      storage.absolute(workdir)
  print(f"written to {runs_where}: " + ", ".join(f"{k} {v}" for k, v in where.items())
        + (f"; teachers and their cache under {storage.absolute(config.teacher_dir)}" if loaded else ""))
  return {"summaries": summaries}


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


SMOKE_NOTE = ("smoke: a wiring check (tiny teachers, a few steps of training): every stage runs, but its "
              "accuracies mean nothing")


# Mistakes of the user (config, files, data, a busy or unwritable workdir): one line, exit code 2.
USER_ERRORS = (NonFiniteLossError, DivergedError, ConfigError, UnknownNameError, cache_lib.CacheMismatchError,
               checkpoint.CheckpointError, workdir_lock.WorkdirLockedError, convert.ConversionError, OSError,
               ImportError, ValueError)


def fail(message: str) -> None:
  """Prints one line on stderr and exits with code 2 (no traceback)."""
  message = str(message).replace("\\'", "'").replace("\\n", " ")
  print("error: " + " ".join(message.split()), file=sys.stderr)
  sys.exit(2)


def resolve_config_path(value: str) -> str:
  """``--config`` may name a file, a shipped config (``mmkd_jax:configs/digits.py``), or just its
  name (``digits``, ``fashion_mnist.py:aver``); the ``:arg`` suffix is kept."""
  if value.endswith(".json"):  # a run's recorded config.json
    return resolve_config_path("run.py") + ":" + storage.absolute(value)
  spec = value.removeprefix("mmkd_jax:")
  path, sep, arg = spec.partition(":")
  if spec == value and os.path.exists(path):
    return value
  name = os.path.basename(path.removeprefix("configs/"))
  name = name if name.endswith(".py") else name + ".py"
  shipped = os.path.join(os.path.dirname(os.path.abspath(importlib.import_module("mmkd_jax.configs").__file__)), name)
  return shipped + sep + arg if os.path.isfile(shipped) else value


USAGE = """usage: python -m mmkd_jax.main --config CONFIG --workdir DIR [--config.FIELD=VALUE ...]
       (or: mmkd-jax --config CONFIG --workdir DIR ...)

CONFIG   a config file (configs/digits.py), a shipped config by name (digits, fashion_mnist.py:aver),
         with its argument after a colon (configs/digits.py:aver,smoke), or a run's config.json
DIR      the run's work directory: config.json, metrics.jsonl, checkpoints/, best/, summary.json;
         the same command on the same DIR resumes

--config.mode=  pipeline (default: train the missing teachers, precompute their outputs, distil the
                student), train_teacher, precompute, distill, evaluate, export, show_config
--config.mode=show_config --config CONFIG
                prints every field with its value, default and a one-line description
--config.FIELD=VALUE
                sets any field (e.g. --config.method=aver --config.epochs=10 --config.seed=1)

Stopping: SIGTERM or Ctrl-C stops within the steps in flight with everything finished so far saved
(exit 0 after SIGTERM, 130 after Ctrl-C; a second Ctrl-C aborts at once); the same command resumes.
User mistakes: one line on stderr, exit 2, nothing written. See README.md.

Also: mmkd-jax runs DIR... (a table of runs), mmkd-jax plot RUN... (their curves as PNG files)."""


def usage() -> str:
  """USAGE with the shipped configs (each header's first paragraph) and the registered methods."""
  directory = os.path.dirname(os.path.abspath(importlib.import_module("mmkd_jax.configs").__file__))
  configs = []
  for name in sorted(f for f in os.listdir(directory) if f.endswith(".py") and f != "__init__.py"):
    with open(os.path.join(directory, name)) as f:
      text = f.read()
    first = " ".join(text.split('"""')[1].strip().split("\n\n")[0].split()) if '"""' in text else ""
    configs.append(f"  {name[:-3]:14s} {first}")
  methods = [f"  {name:14s} {METHODS.get(name).description}" for name in METHODS.names()]
  return USAGE + "\n\nConfigs (--config NAME[:ARG]; each file's header has its commands and expected results):\n" + \
      "\n".join(configs) + "\n\nMethods (--config.method=NAME):\n" + "\n".join(methods)


def split_config_args(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
  """(the other arguments, the --config value, the --config.FIELD=VALUE overrides in order)."""
  rest, config, overrides = [], None, []
  items = iter(argv)
  for item in items:
    if item == "--config" or item.startswith("--config.") and "=" not in item:
      value = next(items, None)
      if value is None:
        fail(f"{item} needs a value")
      item = f"{item}={value}"
    if item.startswith("--config="):
      config = item[len("--config="):]
    elif item.startswith("--config."):
      overrides.append(item[len("--config."):])
    else:
      rest.append(item)
  return rest, config, overrides


class Args(NamedTuple):
  """What ``parse_flags`` hands to ``main``: the arguments absl left, and the loaded config."""
  argv: list[str]
  config: ml_collections.ConfigDict | None


def parse_flags(argv: list[str]) -> Args:
  """absl's flag parsing for the other flags; the config loaded by ``config_lib.load`` (so a
  plug-in method's section exists as soon as ``config.imports`` names its module), with a bad
  config (typo in a field, unknown argument, missing file) reported in one line, and shipped
  configs found by name."""
  if any(item in ("--help", "-h", "--helpshort", "-help") for item in argv[1:]):
    print(usage())
    sys.exit(0)
  rest, config_arg, overrides = split_config_args(list(argv))
  try:
    remaining = flags.FLAGS(rest)
  except flags.Error as e:
    fail(str(e))
  if config_arg is not None:
    path, _, arg = resolve_config_path(config_arg).partition(":")
    try:
      config = config_lib.load(path, arg or None, overrides)
    except ConfigError as e:  # an override (or the config file) names a field wrongly
      fail(f"--{e}" if str(e).startswith("config.") else f"--config: {e}")
    except Exception as e:  # pylint: disable=broad-except  (raised by the config file)
      fail(f"--config: {type(e).__name__}: {str(e).strip(chr(39)).strip()}")
    config.lock()
    return Args(remaining, config)
  if overrides:
    fail(f"--config.{overrides[0]} needs --config CONFIG (see README.md)")
  return Args(remaining, None)


def main(args: Args) -> None:
  # orbax logs every save at INFO and a read-only look at a run's checkpoints at WARNING, TFDS a
  # freshly made dataset directory at WARNING: none of it is for the user (our own lines say
  # what happens; errors still show)
  logging.set_verbosity(logging.ERROR)
  config = args.config
  if config is None:
    fail("--config is required, e.g. --config configs/digits.py (see README.md)")
  if _WORKDIR.value is None and config.mode != "show_config":
    fail("--workdir is required: the directory for checkpoints, metrics and the summary")
  if config.mode != "show_config":
    compilation.enable()  # before the first compilation
  try:
    initialize_distributed(config)
    if jax.process_index() != 0:
      logging.set_verbosity(logging.ERROR)
    run(config, _WORKDIR.value)
  except stops.Preempted as e:  # a clean stop: everything finished so far is saved
    print(str(e), flush=True)
    if e.exit_code:
      sys.exit(e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C outside the stages' stop request, or a second Ctrl-C
    print("\naborted by Ctrl-C: the checkpoints saved so far are kept; run the same command to resume",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)  # pylint: disable=protected-access  (at once: no waiting for background writes)
  except USER_ERRORS as e:
    fail(f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else str(e))


def cli() -> None:
  """The ``mmkd-jax`` console script (``mmkd-jax runs DIR ...``: the runs table; ``mmkd-jax plot
  RUN ...``: their curves as PNG files)."""
  if sys.argv[1:2] == ["runs"]:
    sys.exit(runs_table.main(sys.argv[2:]))
  if sys.argv[1:2] == ["plot"]:
    sys.exit(plots.main(sys.argv[2:]))
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
