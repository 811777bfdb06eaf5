"""A run's identity across sessions: what its checkpoints must match to be resumed (the fields that
may change, the teachers, the dataset's contents, the state's shapes) and which code made it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mmkd_jax import __version__
from mmkd_jax.runs import checkpoint
from mmkd_jax.runs import storage
from mmkd_jax import config as config_lib
from mmkd_jax.config.fields import flatten
from mmkd_jax.data import sources
from mmkd_jax.errors import ConfigError
from mmkd_jax.methods import METHODS


# Fields that may change when a run resumes (or is evaluated): they steer the loop, the logs and
# where files are, not what is computed. Anything else differing from the stored run is refused.
RESUMABLE = ("mode", "export_dir", "epochs", "log_every", "checkpoint_every_epochs", "keep_checkpoints", "async_checkpoints",
             "stop_at_step", "divergence_factor", "smoke", "replica_loop", "replica_shards", "data_dir", "dataset_source_dir", "teacher_dir", "cache_dir", "imports",
             "eval_batch_size", "evaluators", "eval_every", "distributed.", "teacher_training.", "trust_pickle",
             "data_placement", "scan_steps")
# Free to differ too, but no user's choice: written by resolve(), or retired (early runs stored it).
BOOKKEEPING = ("resolved_for", "progress")
# A teacher entry's field (group 1); its checkpoint path may move with the files.
_TEACHER_ENTRY = re.compile(r"teachers\.\[\d+\]\.(\w+)")


def changed_fields(stored: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """``field: stored -> now`` for every field (but the resumable ones and teacher checkpoint
  paths) whose value differs between a stored run's config and ``config``. A field the stored
  config lacks counts as unchanged at its ``base_config`` default: a later code version added it
  with the behaviour the run was made with."""
  old, new = flatten(config_lib.upgrade_stored(stored)), flatten(json.loads(config.to_json_best_effort()))
  defaults = flatten(json.loads(config_lib.base_config().to_json_best_effort()))
  # a teacher entry's fields default as config.teacher() sets them
  entry_defaults = flatten(json.loads(config_lib.teacher("", "").to_json_best_effort()))
  unset = object()

  def default_of(key: str) -> Any:
    entry = _TEACHER_ENTRY.fullmatch(key)
    return entry_defaults.get(entry.group(1), unset) if entry else defaults.get(key, unset)

  out = []
  for key in sorted(set(old) | set(new)):
    entry = _TEACHER_ENTRY.fullmatch(key)
    # checkpoint paths may move with the files: teachers are compared by fingerprint, and a
    # resumed student never reads student_checkpoint again (summary.json records its start)
    if key.startswith(RESUMABLE + BOOKKEEPING) or key == "student_checkpoint" or (entry and entry.group(1) == "checkpoint"):
      continue
    if key not in old and new.get(key, unset) == default_of(key):
      continue
    if old.get(key, "<unset>") != new.get(key, "<unset>"):
      out.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
  return out


class ConfigMismatchError(ConfigError):
  """The work directory holds a run made with another config."""


def run_identity(setup: Any, state: Any) -> dict[str, Any]:
  """What a checkpoint must match to be resumed: the config, the teachers, the state's shapes."""
  shapes = {jax.tree_util.keystr(p): list(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  return {"config": json.loads(setup.config.to_json_best_effort()),
          "teacher_fingerprints": {t.name: t.fingerprint for t in setup.teachers}, "state_shapes": shapes,
          "dataset_version": sources.dataset_version(setup.config)}


def check_resumable(ckpt: checkpoint.Checkpoints, identity: dict[str, Any], which: str = "latest") -> None:
  """Refuses a work directory whose checkpoints were made by another run, naming what differs
  (and whether the state's shape does, which no restore could bridge)."""
  found = ckpt.latest_meta(which)
  if found is None or "config" not in found[0]:
    return
  meta, step = found
  changes = changed_fields(meta["config"], ml_collections.ConfigDict(identity["config"]))
  teachers = [f"teacher {name}: fingerprint {meta.get('teacher_fingerprints', {}).get(name)} -> {fp}"
              for name, fp in identity["teacher_fingerprints"].items()
              if meta.get("teacher_fingerprints", {}).get(name, fp) != fp]
  if meta.get("dataset_version", "") != identity["dataset_version"]:
    teachers.append(f"the dataset's contents: {meta.get('dataset_version', '')!r} -> {identity['dataset_version']!r} "
                    "(the image folder changed)")
  if changes or teachers:
    shape = ("the train state's shape differs too, so it cannot be restored"
             if meta.get("state_shapes") != identity["state_shapes"] else "the train state's shape is the same")
    raise _mismatch(ckpt.workdir, step, changes + teachers, f" ({shape})")


# Fields a method owns (config.resolve fills them from its presets): when the method differs, their
# differences follow from it and are not listed.
_METHOD_OWNED = ("weights.", "meta.lookahead_weights.", "temperature", "feature_layer", "feat_from_epoch")


def _worth_naming(differences: list[str]) -> list[str]:
  """The differences a user can act on: with another method, not the fields it owns (a section
  ``<method>.``, its weights, temperature and layer); a cosine schedule's span with the flag that
  keeps the run's."""
  keys = [d.split(":", 1)[0] for d in differences]
  if "method" in keys:
    sections = tuple(f"{name}." for name in METHODS)
    differences = [d for d, k in zip(differences, keys) if not k.startswith(_METHOD_OWNED + sections)]
  out = []
  for difference in differences:
    stored = difference.split(": ", 1)[1].split(" -> ")[0]
    if difference.startswith("schedule_epochs: ") and stored != "0":
      difference += (f" (the span of the run's schedule, fixed when it started from its epochs: keep it with "
                     f"--config.schedule_epochs={stored})")
    out.append(difference)
  return out


def _mismatch(run_dir: str, step: int, differences: list[str], detail: str = "") -> ConfigMismatchError:
  """The refusal of a work directory whose checkpoints another run made: what differs, and the two
  ways on."""
  return ConfigMismatchError(
      f"{run_dir} holds checkpoint step {step} of another run: " + "; ".join(_worth_naming(differences)) + detail +
      f". Resume it without those changes (its config: --config {storage.join(run_dir, 'config.json')}), or "
      "start this run in another --workdir.")


def stored_config(run_dir: str) -> tuple[dict[str, Any], int] | None:
  """The config and step of the newest readable checkpoint in ``run_dir`` (read-only: nothing is
  created), or None."""
  directory = storage.join(run_dir, "checkpoints")
  if not storage.is_dir(directory):
    return None
  manager = ocp.CheckpointManager(storage.for_library(directory), options=ocp.CheckpointManagerOptions(read_only=True))
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # pylint: disable=broad-except  (unreadable: the run's restore reports it)
      continue
    if "config" in meta:
      return dict(meta["config"]), step
  return None


def check_workdir(plans: list[tuple[str, ml_collections.ConfigDict]], workdir: str) -> None:
  """Refuses, before any work, a work directory (or a replica's directory) whose checkpoints were
  made with another config, naming each differing field. ``plans``: (name, resolved config) of
  each run the command trains (``config.member_configs``)."""
  for name, run_config in plans:
    run_dir = storage.join(workdir, name) if name else workdir
    found = stored_config(run_dir)
    if found is None:
      continue
    changes = changed_fields(found[0], run_config)
    if changes:
      raise _mismatch(run_dir, found[1], changes)


def code_version() -> str:
  """The package version and, in a git checkout, its commit (+dirty) when this process started:
  which code made a run."""
  return _CODE_VERSION


def _read_code_version(package: str = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) -> str:
  """``<version>+<git describe>``, with ``-dirty`` when the package's own files differ from that
  commit: a changed test, experiment or document does not change what a run computes. Nothing
  from git where the package is not tracked by the repository around it (installed in a
  virtualenv inside a user's checkout)."""
  def git(*args: str) -> str:
    return subprocess.run(["git", "-C", package, *args], capture_output=True, text=True, timeout=5,
                          check=True).stdout.strip()
  try:
    if not git("ls-files", "--", "__init__.py"):
      return __version__
    commit = git("describe", "--always")
    dirty = git("status", "--porcelain", "--", ".")
  except (OSError, subprocess.SubprocessError):
    return __version__
  return f"{__version__}+{commit}{'-dirty' if dirty else ''}"


_CODE_VERSION = _read_code_version()
