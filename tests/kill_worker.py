"""Runs ``python -m mmkd_jax.main ARGS`` and SIGKILLs itself at a chosen point (tests/test_kill.py).

    python tests/kill_worker.py POINT N -- --config ... --workdir ...

POINT (prefixed ``term:`` for SIGTERM instead of SIGKILL): disk_full (the N-th student checkpoint save fails with ENOSPC, as on a full disk), teacher_step (the N-th training batch of a teacher run), precompute (the N-th batch of
teacher outputs), step (the N-th training batch of the student run), dispatch (the N-th dispatch
of a device-resident student run, ``config.data_placement=device``), async_save (right after
the N-th checkpoint save was started, while orbax writes it in the background), after_epoch
(after the N-th checkpoint save has completed), evaluation (in the N-th evaluation pass).
The patches only decide *when* to die; the code that runs is the package's own.
"""

from __future__ import annotations

import os
import signal
import sys

point, count = sys.argv[1], int(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1:]
calls = {"n": 0}
# "term:<point>": SIGTERM (the preemption notice; the program must stop cleanly) instead of SIGKILL.
SIGNAL = signal.SIGTERM if point.startswith("term:") else signal.SIGKILL
point = point.removeprefix("term:")


def _tick() -> None:
  calls["n"] += 1
  if calls["n"] == count:
    sys.stdout.flush()
    os.kill(os.getpid(), SIGNAL)


def main() -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from mmkd_jax import main as cli  # pylint: disable=import-outside-toplevel
  from mmkd_jax.runs import checkpoint
  from mmkd_jax.evaluation import evaluate as evaluation
  from mmkd_jax.training import setup as train
  from mmkd_jax.teachers import cache  # pylint: disable=import-outside-toplevel

  if point in ("teacher_step", "step"):
    original = train.train_batches

    def batches(setup, epoch, start_batch=0):
      is_teacher = setup.config.method == "none"
      for batch in original(setup, epoch, start_batch):
        if is_teacher == (point == "teacher_step"):
          _tick()
        yield batch
    train.train_batches = batches
  elif point == "dispatch":  # device-resident data: the N-th dispatch of training steps
    from mmkd_jax.training import dispatch  # pylint: disable=import-outside-toplevel
    original_epoch = dispatch.Scanned.epoch

    def epoch(self, program, epoch_index, first_batch):
      for stepped in original_epoch(self, program, epoch_index, first_batch):
        _tick()
        yield stepped
    dispatch.Scanned.epoch = epoch
  elif point == "precompute":
    write = cache.write_cache

    def write_cache(directory, spec, producer, *a, **k):
      def dying(indices, replay):
        _tick()
        return producer(indices, replay)
      return write(directory, spec, dying, *a, **k)
    cache.write_cache = write_cache
  elif point in ("async_save", "after_epoch"):
    save = checkpoint.Checkpoints.save

    def dying_save(self, *a, **k):
      save(self, *a, **k)
      if point == "after_epoch":
        self.wait()
      if "teacher" not in self.workdir and not self.workdir.endswith(".run"):
        _tick()
    checkpoint.Checkpoints.save = dying_save
  elif point == "disk_full":
    import errno  # pylint: disable=import-outside-toplevel
    save = checkpoint.Checkpoints.save

    def full_save(self, *a, **k):
      calls["n"] += 1
      if calls["n"] == count:
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(self.workdir, "checkpoints"))
      save(self, *a, **k)
    checkpoint.Checkpoints.save = full_save
  elif point == "evaluation":
    accuracy = evaluation.student_accuracy

    def dying_accuracy(*a, **k):
      _tick()
      return accuracy(*a, **k)
    evaluation.student_accuracy = dying_accuracy
  else:
    raise SystemExit(f"unknown kill point {point!r}")
  sys.argv = ["mmkd_jax.main", *args]
  app.run(cli.main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  main()
