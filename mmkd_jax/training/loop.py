"""The one epoch loop of every run: a single run and the replicas of one program alike.

A ``Program`` is what steps: the (single or stacked) state and its compiled train / meta steps.
A ``Member`` is one run's bookkeeping: its config, work directory, host-side history,
checkpoints and metric writer. A single run is a program with one member; ``config.replicas``
makes one member per replica over a stacked state (``mmkd_jax.training.replicas``). ``run`` trains them
epoch by epoch, logging, evaluating, checkpointing, stopping on a request or a non-finite term,
written once for both.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from mmkd_jax.runs import stop as stops
from mmkd_jax.runs import checkpoint
from mmkd_jax.training import dispatch
from mmkd_jax.evaluation import evaluate as evaluation
from mmkd_jax.runs import progress
from mmkd_jax.runs.metrics import MetricWriter, StepLog, eval_name, mean_metrics, tagged_train_metrics

PyTree = Any


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or infinite."""


class DivergedError(FloatingPointError):
  """A loss term grew far beyond its first logged value (``config.divergence_factor``)."""


# Dispatches the host may run ahead of the device. Steps are dispatched asynchronously and a stop
# request is read on the host, so without a bound a stop lands wherever the input pipeline let the
# host run ahead (a whole epoch on a fast pipeline); with it, a stop request is honoured within
# this many dispatches plus the one being prepared. Two keep the device fed: the next step is
# queued while one runs (docs/reliability.md: stop latency and throughput measured).
MAX_IN_FLIGHT = 2


@dataclasses.dataclass
class Member:
  """One run of the program: its setup (train.Setup), its own state (for evaluation and
  checkpoints), host-side history, checkpoints and writer."""
  setup: Any
  workdir: str
  quiet: bool
  state: PyTree
  host: dict[str, Any]
  ckpt: checkpoint.Checkpoints
  writer: MetricWriter
  eval_fn: Callable
  label: str = ""                 # printed before each epoch line (a replica's name)
  stopped: str | None = None      # its non-finite or divergence message once it stopped
  stop_status: str = ""           # "nonfinite" or "diverged" once stopped
  eval_batches: Callable | None = None  # (batch size) -> device batches of the split (data.resident)
  restored_step: int = 0          # the checkpoint step this command resumed from (0: a fresh start)

  @property
  def teacher_names(self) -> list[str]:
    return [t.name for t in self.setup.teachers]

  def write_window(self, step: int, means: dict[str, np.ndarray], lr: float) -> None:
    self.writer.write(step, {**tagged_train_metrics(means, self.teacher_names), "train/lr": lr})

  def note_first_step(self, means: dict[str, np.ndarray]) -> None:
    """Keeps the run's first step's loss terms (in the checkpoint, so a resumed run checks alike):
    the divergence check's reference, which a window's mean can hide (a run can blow up inside
    its first window and stay below 10x of that window's mean)."""
    values = {t: float(means.get(f"loss_{t}", 0.0)) for t in self.setup.method_spec.terms}
    self.host.setdefault("first_step_reference", {"loss": [float(means["loss"]), 1],
                                                  **{t: [v, 1] for t, v in values.items() if v > 0}})

  def check_divergence(self, step: int, means: dict[str, np.ndarray]) -> str | None:
    """The divergence message when a loss term's window mean exceeds ``divergence_factor`` times
    its reference and, weighted, the whole loss at that reference; else None.

    A term's reference is its value at the run's first step; a term that is zero there (a feature
    term that starts at ``feat_from_epoch``), or a run resumed from a checkpoint that predates the
    first step's record, is measured from its first non-zero logged window instead. Both are kept
    in the checkpoint, so a resumed run compares with the same values. Both conditions: a tiny
    term that grows tenfold but stays negligible is no divergence. Healthy runs stay far inside
    (docs/reliability.md row 56: at most 1.39x over the first step in the first 66 steps of every
    method, 3.6x over the first window in the committed runs); a diverging run grows by orders of
    magnitude (tests/training/test_loop.py)."""
    config = self.setup.config
    factor = config.divergence_factor
    if not factor:
      return None
    reference = self.host.setdefault("loss_reference", {})
    if "loss" not in reference and "loss" in means:
      reference["loss"] = [float(means["loss"]), step]
    from_step = self.host.get("first_step_reference") or {}
    for term in self.setup.method_spec.terms:
      value = means.get(f"loss_{term}")
      if value is None or not np.isfinite(value):
        continue
      value = float(value)
      if term not in reference and value != 0.0:
        reference[term] = [value, step]
      baseline, since = (from_step, "its first step") if term in from_step else (reference, "its first logged window")
      if term not in baseline:
        continue
      first, first_at = baseline[term]
      if first > 0 and value > factor * first and float(config.weights[term]) * value > baseline["loss"][0]:
        spe = self.setup.steps_per_epoch
        return (f"loss term {term!r} grew from {first:.4g} ({since}, step {first_at}) to {value:.4g} at step "
                f"{step} (epoch {(step - 1) // spe + 1}), over {factor:g}x: the run diverges; training stopped, the "
                f"checkpoints saved so far are kept. {self._scale_knobs(baseline, since)}; lower one, or "
                "--config.divergence_factor=0 turns this check off.")
    return None

  def _scale_knobs(self, reference: dict[str, list], since: str) -> str:
    """Where the loss's scale is set: the term weighing most in the reference loss, and lr."""
    config = self.setup.config
    shares = {t: float(config.weights[t]) * reference[t][0] / reference["loss"][0]
              for t in self.setup.method_spec.terms if t in reference and reference["loss"][0] > 0}
    lr = f"config.lr (now {config.lr:g})"
    if not shares:
      return f"Its scale is set by {lr}"
    top = max(shares, key=shares.get)
    return (f"The loss's scale is set by config.weights.{top} (now {float(config.weights[top]):g}: "
            f"{100 * shares[top]:.0f}% of the loss at {since}) and {lr}")

  def save_now(self) -> None:
    """Checkpoints the current state after a finished epoch (no metric sums to carry)."""
    self.writer.flush()
    self.ckpt.save(int(jax.device_get(self.state.step)), self.state, self.host, force=True)

  def save_stop(self, carry: dict, tic: float) -> None:
    """Checkpoints the current step with the epoch's metric sums (so a resumed run logs what
    an uninterrupted one would)."""
    self.host["carry"] = carry
    self.host["train_seconds"] = self.host.get("train_seconds", 0.0) + time.perf_counter() - tic
    self.writer.flush()  # the log reaches the checkpoint's step before the checkpoint exists
    self.ckpt.save(int(jax.device_get(self.state.step)), self.state, self.host, force=True)
    self.host.pop("carry")

  def end_epoch(self, epoch: int, train_means: dict[str, np.ndarray], seen: int, tic: float,
                clock: progress.EpochClock | None = None) -> None:
    """Evaluates, logs and checkpoints after a finished epoch; its line ends with ``clock``'s
    elapsed time and estimate."""
    config, spec = self.setup.config, self.setup.spec
    class_weights = None
    if "class_weight_sums" in train_means:
      counts = train_means.pop("class_counts")[:, None]
      sums = train_means.pop("class_weight_sums")
      class_weights = np.where(counts > 0, sums / np.maximum(counts, 1e-12), np.nan)
    evaluated = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
    batches = self.eval_batches(config.eval_batch_size) if evaluated and self.eval_batches else None
    result = evaluation.evaluate_student(self.eval_fn, self.state, self.setup.dataset.test, spec,
                                         config.eval_batch_size, self.setup.mesh, self.setup.steps.evaluators,
                                         batches) if evaluated else {}
    epoch_seconds = time.perf_counter() - tic
    self.host["train_seconds"] = self.host.get("train_seconds", 0.0) + epoch_seconds
    name = eval_name(spec)
    is_best = evaluated and result["top1"] > self.host["best_top1"]
    if is_best:
      self.host["best_top1"], self.host["best_epoch"] = result["top1"], epoch + 1
      self.host["best_chosen_on"] = spec.test_split
    scalars = {f"{name}/{k}": v for k, v in result.items() if np.ndim(v) == 0}
    record = {"epoch": epoch + 1, **({"eval_split": spec.test_split} if evaluated else {}), **scalars,
              "train/images_per_s": seen / epoch_seconds,
              **{k: v.tolist() if np.ndim(v) else float(v)
                 for k, v in tagged_train_metrics(train_means, self.teacher_names).items()}}
    self.host["history"].append(record)  # scalars only: the checkpoint's host state stays small
    logged = dict(record, **{f"{name}/{k}": np.asarray(v) for k, v in result.items() if np.ndim(v) > 0})
    if class_weights is not None:  # (classes, teachers): logged, not kept in the checkpoint
      logged["teacher_weights/per_class"] = class_weights
    step_now = int(jax.device_get(self.state.step))
    self.writer.write(step_now, {k: v for k, v in logged.items() if k != "eval_split"})
    if not self.quiet:
      weights = [v for k, v in record.items() if k.startswith("teacher_weights/logits/")]
      extra = f", teacher weights {np.round(weights, 3).tolist()}" if weights else ""
      evaluation_text = (f"{name} top-1 {result['top1']:.2f}% (best {self.host['best_top1']:.2f}% @ "
                         f"{self.host['best_epoch']}), " if evaluated else "")
      timing = f", {clock.text()}" if clock is not None else ""
      print(f"{self.label}epoch {epoch + 1:3d}/{config.epochs}: loss {record.get('train/loss', float('nan')):.4f}, "
            f"train acc {record.get('train/accuracy', 0):.2f}%, {evaluation_text}"
            f"{record['train/images_per_s']:.0f} img/s{extra}{timing}", flush=True)
    self.writer.flush()
    if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs or is_best:
      self.ckpt.save(step_now, self.state, self.host, is_best=is_best)

  def close(self) -> None:
    self.ckpt.close()
    self.writer.close()


@dataclasses.dataclass
class Program:
  """What the members train with: the state (as ``layout`` places the members': one run's own, or
  R replicas' stacked), the compiled steps ``fn(state, batch, teacher_vars, epoch, *layout's
  arguments)``, and the source of each epoch's host batches."""
  state: PyTree
  train_fn: Callable
  meta_fn: Callable
  teacher_vars: Any
  host_batches: Callable[[int, int], Iterator]   # (epoch, first batch) -> host batches
  layout: Any                                    # training.replicas.OneRun or Stacked
  values: dict = dataclasses.field(default_factory=dict)  # per-member tunable scalars (replicas)
  lr_fn: Callable[[int], Any] | None = None                # the learning rate at a step (per member)
  scanned: Any = None        # dispatch.Scanned: device-resident data, scan_steps per dispatch
  dispatches: int = 0        # dispatches this session (the preemption sync point's counter)

  def step(self, fn: Callable, raw: PyTree, epoch: jax.Array) -> dict:
    self.state, metrics = fn(self.state, raw, self.teacher_vars, epoch, *self.layout.step_args(self.values))
    return metrics

  def close(self) -> None:
    if self.scanned is not None:
      self.scanned.close()

  def member_of(self, tree: PyTree, k: int) -> PyTree:
    return self.layout.member_of(tree, k)

  def lr(self, step: int, members: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(self.lr_fn(step), np.float64), (members,))


def _active(members: list[Member]) -> list[int]:
  return [k for k, m in enumerate(members) if m.stopped is None]


def check_finite(program: Program, members: list[Member]) -> None:
  """Stops each member that recorded a non-finite term (a replica is frozen at its last good
  state) while the others go on."""
  nonfinite = np.asarray(jax.device_get(program.state.nonfinite))
  for k in _active(members):
    member = members[k]
    message = member.setup.steps.nonfinite_message(program.member_of(nonfinite, k), member.setup.steps_per_epoch)
    if not message:
      continue
    stop_member(program, member, message, "nonfinite")


def stop_member(program: Program, member: Member, message: str, status: str) -> None:
  """Stops a member for good: it no longer logs, evaluates or checkpoints (its last checkpoint
  is kept); the others go on. With none left the epoch ends and the driver raises
  (``training.run.train``)."""
  del program
  member.stopped, member.stop_status = message, status
  if not member.quiet and member.label:
    print(f"{member.label}{message} The other replicas go on.")


def log_windows(program: Program, members: list[Member], epoch: int, ready: list) -> None:
  """Writes each active member's slice of the finished windows; a member whose window holds a
  non-finite term is stopped first."""
  setup = members[0].setup
  for idx, means in ready:
    step = epoch * setup.steps_per_epoch + idx + 1
    tracked = [np.asarray(means[t]) for t in setup.steps.tracked if t in means]
    if not all(np.all(np.isfinite(program.member_of(v, k)))
               for v in tracked for k in _active(members)):
      check_finite(program, members)
    lr = program.lr(step, len(members))
    for k in _active(members):
      member_means = program.member_of(means, k)
      members[k].write_window(step, member_means, float(lr[k]))
      diverged = members[k].check_divergence(step, member_means)
      if diverged:
        stop_member(program, members[k], diverged, "diverged")


def run_epoch(program: Program, members: list[Member], epoch: int, first_batch: int,
              stop: stops.StopRequest) -> tuple[StepLog, int, float, bool]:
  """Trains one epoch (from ``first_batch``); returns (its step log, images seen per member, start
  time, whether it was interrupted). Every ``log_every`` steps the window before the last one
  (finished, so reading it stalls nothing) is logged and checked for non-finite terms."""
  setup, config = members[0].setup, members[0].setup.config
  spe = setup.steps_per_epoch
  quiet = all(m.quiet for m in members)
  bar = progress.StepBar(spe, first_batch, f"epoch {epoch + 1}/{config.epochs}", quiet)
  log = StepLog(config.log_every, first_batch, program_carry(program, members))
  tic, seen, interrupted = time.perf_counter(), 0, False
  in_flight: collections.deque = collections.deque()  # (each dispatch's last output, its steps), oldest first
  dispatches = (program.scanned.epoch(program, epoch, first_batch) if program.scanned is not None
                else dispatch.streamed(program, setup, epoch, first_batch))
  for stepped in dispatches:
    last = stepped[-1][1]
    in_flight.append((last.get("meta_outer_loss", last["loss"]), len(stepped)))
    while len(in_flight) > MAX_IN_FLIGHT:
      finished, steps = in_flight.popleft()
      finished.block_until_ready()
      bar.advance(steps)  # the bar counts finished steps, not dispatched ones
    for idx, metrics in stepped:
      seen += config.batch_size
      ready = log.add(idx, metrics)
      if epoch == 0 and idx == 0 and config.divergence_factor:
        first = mean_metrics([metrics])
        for k in _active(members):
          members[k].note_first_step(program.member_of(first, k))
      log_windows(program, members, epoch, ready)
      if ready:
        means = {k: float(np.mean(ready[-1][1][k])) for k in ("loss", "accuracy")}
        bar.note(loss=f"{means['loss']:.3f}", acc=f"{100 * means['accuracy']:.1f}",
                 img_s=f"{seen / (time.perf_counter() - tic):.0f}")
    if not _active(members):  # every member stopped (non-finite or diverging): nothing left to train
      break
    # The preemption sync point counts dispatches (JAX's sync manager wants consecutive calls).
    program.dispatches += 1
    global_step = epoch * spe + idx + 1
    if (stop.requested or global_step == config.stop_at_step
        or members[0].ckpt.reached_preemption(program.dispatches)):
      interrupted = True
      break
  bar.advance(sum(steps for _, steps in in_flight))
  bar.close()
  return log, seen, tic, interrupted


def program_carry(program: Program, members: list[Member]) -> dict | None:
  """The metric sums the members carried over a mid-epoch stop, as the layout places them."""
  return program.layout.carry([m.host.pop("carry", None) for m in members])


def run(program: Program, members: list[Member], stop: stops.StopRequest) -> bool:
  """Trains every active member to ``config.epochs`` (from the step its checkpoint holds);
  returns whether it was interrupted (a stop request, ``stop_at_step`` or a preemption point),
  after checkpointing every active member where it stopped.

  A stop that comes after an epoch's last batch was trained (or during its evaluation) ends that
  epoch as usual first (evaluation, logs, best checkpoint): the resumed command starts at the next
  epoch, so the records equal an uninterrupted run's. A stop during the last epoch finishes the run."""
  setup = members[0].setup
  spe, epochs = setup.steps_per_epoch, setup.config.epochs
  active = _active(members)
  start_step = max(int(np.max(jax.device_get(members[k].state.step))) for k in active) if active else epochs * spe
  clock = progress.EpochClock(epochs - start_step // spe)
  for epoch in range(start_step // spe, epochs):
    if not _active(members):
      break
    first_batch = start_step % spe if epoch == start_step // spe else 0
    log, seen, tic, interrupted = run_epoch(program, members, epoch, first_batch, stop)
    check_finite(program, members)
    log_windows(program, members, epoch, log.flush())
    step_now = int(np.max(jax.device_get(program.state.step)))
    epoch_done = step_now == (epoch + 1) * spe
    carry = None if epoch_done else log.carry(step_now - epoch * spe - 1)
    if epoch_done:
      clock.tick()
    for k in _active(members):
      member = members[k]
      member.state = program.layout.member_state(program.state, k, member.setup.mesh)
      if epoch_done:
        member.end_epoch(epoch, program.member_of(log.epoch_means(), k), seen, tic, clock)
      else:
        member.save_stop(program.layout.member_carry(carry, k), tic)
    # A stop request that arrived during the evaluation counts too (single host: the flag).
    if (interrupted or stop.requested) and not (epoch_done and epoch + 1 == epochs):
      for k in _active(members) if epoch_done else ():
        members[k].save_now()
      for member in members:
        member.ckpt.wait()
      return True
  return False
