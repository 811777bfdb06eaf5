"""Orbax checkpoints of the whole TrainState: latest (kept N deep) and best, async and atomic.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save never leaves a half checkpoint that restore would pick. A checkpoint that exists but
cannot be read (corrupt files) is reported with its step and the next older one is used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
  """No checkpoint in the work directory could be restored."""


def _manager(directory: str, keep: int, async_save: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save,
      preservation_policy=ocp.checkpoint_managers.LatestN(keep))
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpoints:
  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), max(keep, 1), async_save)
    self.best = _manager(os.path.join(workdir, "best"), 1, async_save)

  def save(self, step: int, state: PyTree, host_state: dict[str, Any], is_best: bool = False,
           force: bool = False) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(host_state))
    if step not in self.latest.all_steps():
      self.latest.save(step, args=args, force=force)
    if is_best:
      self.best.wait_until_finished()
      if step not in self.best.all_steps():
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(host_state)), force=True)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()

  def restore(self, abstract_state: PyTree, which: str = "latest"
              ) -> tuple[PyTree, dict[str, Any], int] | None:
    """The newest readable checkpoint as (state, host_state, step); None if there is none."""
    manager = self.latest if which == "latest" else self.best
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    errors = []
    for step in steps:
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        if errors:
          logging.warning("using checkpoint step %d instead", step)
        return restored["state"], dict(restored["meta"]), step
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        message = f"checkpoint step {step} in {manager.directory} is unreadable: {type(e).__name__}: {e}"
        logging.error("%s", message)
        print(f"WARNING: {message}; trying an older checkpoint")
        errors.append(message)
    raise CheckpointError("no readable checkpoint: " + " | ".join(errors) +
                          ". Delete the damaged step directories or start a fresh --workdir.")
