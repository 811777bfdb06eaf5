"""Orbax checkpoints of the whole TrainState: latest (kept N deep) and best, async and atomic;
and the work-directory lock.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save never leaves a half checkpoint that restore would pick. A checkpoint that exists but
cannot be read (corrupt files) is reported with its step, moved aside to ``<workdir>/corrupt/``
(never deleted) and the next older one is used; training back to that step saves it anew.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import shutil
import socket
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
  """No checkpoint in the work directory could be restored."""


class WorkdirLockedError(RuntimeError):
  """Another process is running on the same work directory."""


def _manager(directory: str, keep: int, async_save: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save,
      preservation_policy=ocp.checkpoint_managers.LatestN(keep))
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpoints:
  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
    self.workdir = workdir
    self.latest = _manager(os.path.join(workdir, "checkpoints"), max(keep, 1), async_save)
    self.best = _manager(os.path.join(workdir, "best"), 1, async_save)

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
    source = os.path.join(str(manager.directory), str(step))
    target = os.path.join(self.workdir, "corrupt", f"{os.path.basename(str(manager.directory))}-{step}-"
                          f"{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0 and os.path.exists(source):
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(source, target)
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


# Locks this process holds, by real path: the command holds its work directory's lock for all
# its stages, and the student stage inside it takes the same lock again (flock would refuse a
# second open file of the same process).
_HELD: dict[str, list] = {}


class WorkdirLock:
  """An exclusive lock on ``<workdir>/.lock`` for the life of a run (process 0 of a multi-host
  run): a second run on the same work directory is refused, naming the first. The kernel drops
  the lock when its process dies, so a killed run never leaves a stale one. Re-entrant within a
  process."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._key = os.path.realpath(self.path)

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    if self._key in _HELD:
      _HELD[self._key][1] += 1
      return self
    lock_file = open(self.path, "a+")
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      lock_file.seek(0)
      holder = lock_file.read().strip() or "another process"
      lock_file.close()
      raise WorkdirLockedError(f"{os.path.dirname(self.path)} is in use by {holder}; wait for it, stop "
                               "it, or use another --workdir") from e
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    lock_file.flush()
    _HELD[self._key] = [lock_file, 1]
    return self

  def __exit__(self, *exc) -> None:
    held = _HELD.get(self._key)
    if held is None:
      return
    held[1] -= 1
    if held[1] == 0:
      del _HELD[self._key]
      fcntl.flock(held[0], fcntl.LOCK_UN)
      held[0].close()
