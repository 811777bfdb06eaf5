"""The work-directory lock: one command per work directory, local or on a bucket.

Local: ``fcntl.flock`` on ``<workdir>/.lock``; the kernel drops it when its process dies, so a
killed run never leaves a stale lock.

``gs://``: the object ``<workdir>/.lock``, created only if absent (a ``ifGenerationMatch=0``
precondition: of two hosts racing, exactly one wins) and rewritten every ``REFRESH_S`` seconds
while the command runs, each time only if it is still the generation this process wrote. A lock
whose last refresh is older than ``STALE_S`` (its holder was killed or lost), or whose holder is a
dead process on this same host, is taken over, again under a generation precondition. Other object
stores (``s3://``, ...) have no such precondition here: the command runs unlocked and says so.

Only process 0 of a multi-host run holds it. Re-entrant within a process: the command holds it for
all its stages and the student stage takes it again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from mmkd_jax.runs import storage

LOCK_FILE = ".lock"
REFRESH_S = float(os.environ.get("MMKD_LOCK_REFRESH_S", 30))
STALE_S = float(os.environ.get("MMKD_LOCK_STALE_S", 120))


class WorkdirLockedError(RuntimeError):
  """Another process is running on the same work directory."""


def _holder() -> dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(holder: dict[str, Any]) -> str:
  return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def _refused(workdir: str, holder: str) -> WorkdirLockedError:
  return WorkdirLockedError(f"{workdir} is in use by {holder}; wait for it, stop it, or use another --workdir")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class _FileLock:
  def __init__(self, workdir: str):
    self.workdir = storage.absolute(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)

  def acquire(self) -> None:
    lock_file = open(self.path, "a+")
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      lock_file.seek(0)
      holder = lock_file.read().strip() or "another process"
      lock_file.close()
      raise _refused(self.workdir, holder) from e
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(_describe(_holder()))
    lock_file.flush()
    self._file = lock_file

  def release(self) -> None:
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


class _GcsLock:
  """A lock object with generation preconditions, refreshed by a daemon thread."""

  def __init__(self, workdir: str):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    from google.cloud import storage as gcs  # pylint: disable=import-outside-toplevel
    self.workdir = storage.absolute(workdir)
    bucket, _, prefix = self.workdir.removeprefix("gs://").partition("/")
    self._blob = gcs.Client().bucket(bucket).blob(f"{prefix}/{LOCK_FILE}" if prefix else LOCK_FILE)
    self._conflict = (exceptions.PreconditionFailed, exceptions.NotFound)
    self._generation = None
    self._stop = threading.Event()

  def _write(self, if_generation_match: int) -> None:
    record = dict(self._record, refreshed=time.time())
    self._blob.upload_from_string(json.dumps(record), content_type="application/json",
                                  if_generation_match=if_generation_match)
    self._generation = self._blob.generation

  def acquire(self) -> None:
    self._record = _holder()
    for _ in range(3):  # the lock object may be released or replaced between two requests
      try:
        self._write(0)
        break
      except self._conflict:
        pass
      try:
        self._blob.reload()
        generation = self._blob.generation
        current = json.loads(self._blob.download_as_bytes(if_generation_match=generation))
      except self._conflict:
        continue
      if not self._abandoned(current):
        raise _refused(self.workdir, _describe(current))
      try:
        self._write(generation)
      except self._conflict:
        continue
      print(f"took over the abandoned lock of {self.workdir} ({_describe(current)})", file=sys.stderr)
      break
    else:
      raise _refused(self.workdir, "other processes competing for it")
    threading.Thread(target=self._refresh, daemon=True, name="mmkd_jax workdir lock").start()

  @staticmethod
  def _abandoned(holder: dict[str, Any]) -> bool:
    if time.time() - float(holder.get("refreshed", 0)) > STALE_S:
      return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1)))

  def _refresh(self) -> None:
    while not self._stop.wait(REFRESH_S):
      try:
        self._write(self._generation)
      except self._conflict:
        print(f"WARNING: the lock of {self.workdir} was taken by another process; this command no "
              "longer holds its work directory", file=sys.stderr)
        return
      except Exception as e:  # pylint: disable=broad-except  (a network hiccup: try again next time)
        print(f"WARNING: could not refresh the lock of {self.workdir}: {e}", file=sys.stderr)

  def release(self) -> None:
    self._stop.set()
    try:
      self._blob.delete(if_generation_match=self._generation)
    except self._conflict:
      pass


class _NoLock:
  def __init__(self, workdir: str):
    self.workdir = workdir

  def acquire(self) -> None:
    print(f"WARNING: {self.workdir} is not locked (only local and gs:// work directories are): make sure "
          "no other command uses it", file=sys.stderr)

  def release(self) -> None:
    pass


# Locks this process holds, by work directory, with their hold counts.
_HELD: dict[str, list] = {}


class WorkdirLock:
  """An exclusive lock on a work directory for the life of a command (process 0 of a multi-host
  run): a second command on the same work directory is refused, naming the first."""

  def __init__(self, workdir: str):
    self.workdir = storage.absolute(workdir)
    self._key = self.workdir if storage.is_url(workdir) else os.path.realpath(self.workdir)

  def __enter__(self) -> "WorkdirLock":
    refused = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirLockedError as e:
        refused = e
    if jax.process_count() > 1:  # every process learns process 0's answer: all stop, none waits
      held = bool(multihost_utils.broadcast_one_to_all(np.int32(refused is None)))
      if not held and refused is None:
        refused = WorkdirLockedError(f"{self.workdir} is in use (process 0 could not lock it: see its "
                                     "message); wait for the other command, stop it, or use another --workdir")
    if refused is not None:
      raise refused
    return self

  def _acquire(self) -> None:
    if self._key in _HELD:
      _HELD[self._key][1] += 1
      return
    kind = (_FileLock if not storage.is_url(self.workdir)
            else _GcsLock if self.workdir.startswith("gs://") else _NoLock)
    lock = kind(self.workdir)
    lock.acquire()
    _HELD[self._key] = [lock, 1]

  def __exit__(self, *exc) -> None:
    held = _HELD.get(self._key)
    if held is None:
      return
    held[1] -= 1
    if held[1] == 0:
      del _HELD[self._key]
      held[0].release()
