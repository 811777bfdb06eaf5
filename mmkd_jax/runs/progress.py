"""What a command shows of where it is: each stage and its place, a step bar with its rate and the
time left on a terminal, and plain lines (one per epoch, and one a minute in long epochs) with the
elapsed time and an estimate where the output is a file or a pipe: no escape codes there."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 60.0   # a plain progress line inside an epoch this often, off a terminal


def on_terminal() -> bool:
  return sys.stderr.isatty()


def stage(label: str, text: str) -> None:
  """``[teacher 2/3] training ...``: a stage of the command and its place."""
  print(f"[{label}] {text}", flush=True)


def clock(seconds: float) -> str:
  """``1:02:03`` or ``2:03``."""
  seconds = max(int(round(seconds)), 0)
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class EpochClock:
  """Elapsed time of a stage and the time its remaining epochs will take, from the epochs of this
  command after its first (which compiles the steps): no estimate after the first."""

  def __init__(self, epochs_left: int):
    self.start = time.perf_counter()
    self.epochs_left = epochs_left
    self.done = 0
    self.first_end: float | None = None

  def tick(self) -> None:
    """An epoch of the stage was trained (called once per epoch, before its lines)."""
    self.done += 1
    self.epochs_left -= 1

  def text(self) -> str:
    """``elapsed 0:38, about 2:24 left`` when an epoch's line is printed."""
    now = time.perf_counter()
    if self.done == 1 and self.first_end is None:
      self.first_end = now
    elapsed = f"elapsed {clock(now - self.start)}"
    if self.epochs_left <= 0:
      return elapsed
    if self.done <= 1 or self.first_end is None:
      # The first epoch of a command compiles its steps (a meta step ~10x a plain one): an
      # estimate from it alone was 3.7x the time the student's remaining epochs took.
      return elapsed + " (compiling included)"
    per_epoch = (now - self.first_end) / (self.done - 1)
    return elapsed + f", about {clock(per_epoch * self.epochs_left)} left"


class StepBar:
  """An epoch's steps: a tqdm bar (rate, time left in the epoch) on a terminal; elsewhere a plain
  line every ``PLAIN_EVERY_SECONDS`` once the epoch has taken that long; nothing when quiet."""

  def __init__(self, total: int, initial: int, desc: str, quiet: bool):
    self.total, self.done, self.desc = total, initial, desc
    self.plain = not quiet and not on_terminal()
    # the terminal's size, or 100 x 20 where a pseudo-terminal reports none: tqdm draws nothing in a
    # window of 0 rows
    size = shutil.get_terminal_size((100, 20))
    self.bar = None if quiet or self.plain else tqdm(total=total, initial=initial, desc=desc, leave=False,
                                                      unit="step", ncols=size.columns, nrows=size.lines)
    self.start = self.last_line = time.perf_counter()
    self.first = initial

  def advance(self, steps: int) -> None:
    self.done += steps
    if self.bar is not None:
      self.bar.update(steps)
    elif self.plain and time.perf_counter() - self.last_line >= PLAIN_EVERY_SECONDS:
      self.last_line = now = time.perf_counter()
      rate = (self.done - self.first) / (now - self.start)
      left = (self.total - self.done) / rate if rate > 0 else 0.0
      print(f"  {self.desc}: step {self.done}/{self.total}, {rate:.2f} steps/s, about {clock(left)} left in the "
            "epoch", flush=True)

  def note(self, **values: str) -> None:
    if self.bar is not None:
      self.bar.set_postfix(values, refresh=False)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def announced(fn: Callable, what: str, quiet: bool) -> Callable:
  """``fn`` (a jitted step) that prints one line before its first call, which compiles it: the
  wait before the first epoch line is then explained (~40 s for a CPU teacher)."""
  if quiet:
    return fn
  first = [True]

  def call(*args, **kwargs):
    if first[0]:
      first[0] = False
      print(f"compiling {what} (once per run) ...", flush=True)
    return fn(*args, **kwargs)
  return call
