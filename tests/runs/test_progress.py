"""mmkd_jax.runs.progress: the epoch line's elapsed time and estimate."""

from __future__ import annotations

from mmkd_jax.runs import progress


def test_the_estimate_leaves_out_the_first_epoch_which_compiles(monkeypatch):
  """A student's first epoch took 54 s (compiling the plain and meta steps), the next ones 15 s:
  no estimate after the first, then 15 s per epoch left, not an average with the first."""
  now = [100.0]
  monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
  clock = progress.EpochClock(epochs_left=4)
  texts = []
  for seconds in (54, 15, 15, 15):
    now[0] += seconds
    clock.tick()
    texts.append(clock.text())
  assert texts == ["elapsed 0:54 (compiling included)", "elapsed 1:09, about 0:30 left",
                   "elapsed 1:24, about 0:15 left", "elapsed 1:39"]
  assert progress.clock(3725) == "1:02:05"
