"""A run's identity across sessions: what its checkpoints must match to be resumed, which code
made it, and stopping on a signal."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax
import ml_collections
import numpy as np

from mmkd_jax import checkpoint
from mmkd_jax import config as config_lib
from mmkd_jax.registry import ConfigError


class ConfigMismatchError(ConfigError):
  """The work directory holds a run made with another config."""


def run_identity(setup: Any, state: Any) -> dict[str, Any]:
  """What a checkpoint must match to be resumed: the config, the teachers, the state's shapes."""
  shapes = {jax.tree_util.keystr(p): list(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  return {"config": json.loads(setup.config.to_json_best_effort()),
          "teacher_fingerprints": {t.name: t.fingerprint for t in setup.teachers}, "state_shapes": shapes}


def check_resumable(ckpt: checkpoint.Checkpoints, identity: dict[str, Any], which: str = "latest") -> None:
  """Refuses a work directory whose checkpoints were made by another run, naming what differs
  (and whether the state's shape does, which no restore could bridge)."""
  found = ckpt.latest_meta(which)
  if found is None or "config" not in found[0]:
    return
  meta, step = found
  changes = config_lib.changed_fields(meta["config"], ml_collections.ConfigDict(identity["config"]))
  teachers = [f"teacher {name}: fingerprint {meta.get('teacher_fingerprints', {}).get(name)} -> {fp}"
              for name, fp in identity["teacher_fingerprints"].items()
              if meta.get("teacher_fingerprints", {}).get(name, fp) != fp]
  if changes or teachers:
    shape = ("the train state's shape differs too, so it cannot be restored"
             if meta.get("state_shapes") != identity["state_shapes"] else "the train state's shape is the same")
    raise ConfigMismatchError(
        f"{ckpt.workdir} holds checkpoint step {step} of another run: " + "; ".join(changes + teachers) +
        f" ({shape}). Use another --workdir, or the stored config (its config.json, or the fields above). "
        f"Fields that may change on resume: {', '.join(config_lib.RESUMABLE[:-2])}.")


def code_version() -> str:
  """The package version and, in a git checkout, its commit (+dirty) when this process started:
  which code made a run."""
  return _CODE_VERSION


def _read_code_version() -> str:
  import subprocess  # pylint: disable=import-outside-toplevel
  from mmkd_jax import __version__  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True,
                            text=True, timeout=5, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ""
  return f"{__version__}+{commit}" if commit else __version__


_CODE_VERSION = _read_code_version()


class StopRequest:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:  # JAX's preemption notifier takes SIGTERM; all hosts stop together
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
