"""Stopping a command on a signal: SIGTERM (a preemption notice) and Ctrl-C become one flag that
every stage checks after each dispatch; the command ends with one line saying where it stopped."""

from __future__ import annotations

import signal
import sys

import jax


class Preempted(Exception):
  """A stop signal (SIGTERM, Ctrl-C) stopped the command at a safe point (everything finished so
  far is on disk and nothing unfinished is marked finished); the same command resumes from there.
  ``exit_code``: 0 after SIGTERM (a scheduler's preemption notice: the job did its part), 130
  after Ctrl-C (the shell's code for an interrupted command, so ``cmd && next`` stops)."""

  def __init__(self, message: str, exit_code: int = 0):
    super().__init__(message)
    self.exit_code = exit_code


# One flag for the whole command: a SIGTERM or Ctrl-C during teacher training, precompute or
# distillation (or between them) is seen by the next check of whichever stage runs.
_STOP = {"requested": False, "signal": None, "previous": {}}
_SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


def stop_requested() -> bool:
  return _STOP["requested"]


def stopped_by() -> str:
  """The signal that asked to stop, as the stop line names it ('SIGTERM' or 'Ctrl-C')."""
  return _SIGNAL_NAMES.get(_STOP["signal"], "SIGTERM")


def stop(where: str) -> Preempted:
  """The clean stop of this command, naming the signal and ``where`` it stopped."""
  code = 130 if _STOP["signal"] == signal.SIGINT else 0
  return Preempted(f"stopped by {stopped_by()} {where}; run the same command to resume", code)


def raise_if_stopped(where: str) -> None:
  """Raises Preempted (naming ``where``) once a stop signal arrived."""
  if _STOP["requested"]:
    raise stop(where)


class StopRequest:
  """Turns SIGTERM and the first Ctrl-C into the flag the loops check after each dispatch, for the
  command that owns it (``mmkd_jax.main``; a caller without a command makes its own); a second
  Ctrl-C raises KeyboardInterrupt at once (``main`` ends the command with one line, exit 130)."""

  @property
  def requested(self) -> bool:
    return _STOP["requested"]

  def __enter__(self):
    if jax.process_count() > 1:  # JAX's preemption notifier takes SIGTERM; all hosts stop together
      return self
    _STOP["requested"], _STOP["signal"] = False, None
    for signum in _SIGNAL_NAMES:
      try:
        _STOP["previous"][signum] = signal.signal(signum, _handle)
      except ValueError:  # not the main thread
        pass
    return self

  def __exit__(self, *exc):
    for signum, previous in _STOP["previous"].items():
      signal.signal(signum, previous)
    _STOP["previous"] = {}


def _handle(signum, frame):
  del frame
  if signum == signal.SIGINT and _STOP["requested"]:
    raise KeyboardInterrupt  # the second Ctrl-C: abort now
  if not _STOP["requested"]:
    _STOP["requested"], _STOP["signal"] = True, signum
    if signum == signal.SIGINT:
      print("\nCtrl-C: stopping after the current step, with a checkpoint (press Ctrl-C again to abort at once)",
            file=sys.stderr, flush=True)
