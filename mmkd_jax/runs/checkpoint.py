"""Orbax checkpoints of the whole TrainState: latest (kept N deep) and best, async and atomic
(local or on an object store: ``mmkd_jax.runs.storage``).

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save never leaves a half checkpoint that restore would pick. A checkpoint that exists but
cannot be read (corrupt files) is reported with its step, moved aside to ``<workdir>/corrupt/``
(never deleted) and the next older one is used; training back to that step saves it anew.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from mmkd_jax.runs import storage

PyTree = Any


class CheckpointError(RuntimeError):
  """No checkpoint in the work directory could be restored."""


def _manager(directory: str, keep: int, async_save: bool, name: str) -> ocp.CheckpointManager:
  # Each manager's barriers get its own prefix: both save the same step at an epoch that is the
  # best so far, and two asynchronous saves of one step under one key fail on several hosts
  # ("Barrier _async_write_complete.<step> is already ongoing").
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save,
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
  return ocp.CheckpointManager(storage.for_library(directory), options=options)


class Checkpoints:
  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
    self.workdir = workdir
    self.latest = _manager(storage.join(workdir, "checkpoints"), max(keep, 1), async_save, "latest")
    self.best = _manager(storage.join(workdir, "best"), 1, async_save, "best")

  def save(self, step: int, state: PyTree, host_state: dict[str, Any], is_best: bool = False,
           force: bool = False) -> None:
    # Orbax serialises the JSON item later, in its writer thread: hand it a copy, or changes the
    # caller makes to its dict after this call (the loop pops its metric carry) land in the file.
    host_state = copy.deepcopy(host_state)

    def args():
      return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(host_state))
    if step not in self.latest.all_steps():
      self.latest.save(step, args=args(), force=force)
    if is_best:
      self.best.wait_until_finished()
      if step not in self.best.all_steps():
        self.best.save(step, args=args(), force=True)

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once any host was told to stop (multi-host
    preemption through JAX's coordination service); False on a single host."""
    return jax.process_count() > 1 and self.latest.reached_preemption(step)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()

  def _manager_of(self, which: str) -> ocp.CheckpointManager:
    return self.latest if which == "latest" else self.best

  def latest_meta(self, which: str = "latest") -> tuple[dict[str, Any], int] | None:
    """The host-side metadata (JSON) of the newest checkpoint that has readable metadata."""
    manager = self._manager_of(which)
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"]), step
      except Exception:  # pylint: disable=broad-except  (unreadable: restore() will report it)
        continue
    return None

  def _quarantine(self, manager: ocp.CheckpointManager, step: int) -> str:
    """Moves an unreadable step aside (``<workdir>/corrupt/``) so that it is neither restored
    again nor blocks a new save of that step; nothing is deleted."""
    source = storage.join(str(manager.directory), str(step))
    target = storage.join(self.workdir, "corrupt", f"{storage.basename(str(manager.directory))}-{step}-"
                          f"{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0 and storage.exists(source):
      storage.move_tree(source, target)
    manager.reload()
    return target

  def restore(self, abstract_state: PyTree, which: str = "latest"
              ) -> tuple[PyTree, dict[str, Any], int] | None:
    """The newest readable checkpoint as (state, host_state, step); None if there is none."""
    manager = self._manager_of(which)
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
        moved = self._quarantine(manager, step)
        message = (f"checkpoint step {step} in {manager.directory} is unreadable ({type(e).__name__}: "
                   f"{str(e).splitlines()[0][:200]}); moved to {moved}")
        logging.error("%s", message)
        print(f"WARNING: {message}; trying an older checkpoint")
        errors.append(message)
    raise CheckpointError("no readable checkpoint: " + " | ".join(errors) +
                          ". The unreadable ones were moved aside, not deleted; the run will start "
                          "from scratch in this --workdir if you run it again.")


def restore_raw_checkpoint(directory: str) -> tuple[dict[str, Any], dict[str, Any], int] | None:
  """The newest checkpoint under ``directory`` (a run's ``checkpoints/`` or ``best/``) as saved:
  (the train state as a tree of arrays, the host-side metadata, its step); None if there is none.
  The arrays land on this process's first device whatever topology saved them (a run trained on
  a pod slice is evaluated and exported on one host)."""
  manager = ocp.CheckpointManager(storage.for_library(directory), item_handlers={
      "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
  step = manager.latest_step()
  if step is None:
    return None
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  saved = manager.item_metadata(step)["state"]
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), getattr(saved, "tree", saved))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           meta=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["meta"]), step


def restore_run(workdir: str, which: str = "best") -> tuple[dict[str, Any], dict[str, Any], int, str]:
  """A run's ``which`` checkpoint ("best" or "latest") as saved: (state tree, host metadata, step,
  which one was read). An unreadable best checkpoint falls back to the latest readable one, saying
  so on stderr; none readable is a CheckpointError, none at all a FileNotFoundError."""
  found, problems = None, []
  for name in ((which, "checkpoints") if which == "best" else ("checkpoints",)):
    directory = storage.join(workdir, "best" if name == "best" else "checkpoints")
    if storage.is_dir(directory):
      try:
        found = restore_raw_checkpoint(directory)
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types for damaged files)
        problems.append(f"{directory} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")
        continue
      if found is not None:
        if problems:
          print(f"warning: {problems[0]}; using the latest checkpoint (step {found[2]}) instead", file=sys.stderr)
          which = "latest"
        break
  if found is None:
    if problems:
      raise CheckpointError(f"no readable checkpoint in {workdir}: " + "; ".join(problems))
    raise FileNotFoundError(f"no checkpoint in {workdir} (expected {workdir}/best or {workdir}/checkpoints)")
  return (*found, which)
