"""The one epoch loop of every run: a single run and the replicas of one program alike.

A ``Program`` is what steps: the (single or stacked) state and its compiled train / meta steps.
A ``Member`` is one run's bookkeeping: its config, work directory, host-side history,
checkpoints and metric writer. A single run is a program with one member; ``config.replicas``
makes one member per replica over a stacked state (``mmkd_jax.replicas``). ``run`` trains them
epoch by epoch, logging, evaluating, checkpointing, stopping on a request or a non-finite term,
written once for both.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm import tqdm

from mmkd_jax import checkpoint, dispatch, evaluation, runs
from mmkd_jax.metrics import MetricWriter, StepLog, eval_name, tagged_train_metrics

PyTree = Any


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or infinite."""


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
  stopped: str | None = None      # its non-finite message once it stopped
  eval_batches: Callable | None = None  # (batch size) -> device batches of the split (data.resident)

  @property
  def teacher_names(self) -> list[str]:
    return [t.name for t in self.setup.teachers]

  def write_window(self, step: int, means: dict[str, np.ndarray], lr: float) -> None:
    self.writer.write(step, {**tagged_train_metrics(means, self.teacher_names), "train/lr": lr})

  def save_stop(self, carry: dict, tic: float) -> None:
    """Checkpoints the current step with the epoch's metric sums (so a resumed run logs what
    an uninterrupted one would)."""
    self.host["carry"] = carry
    self.host["train_seconds"] = self.host.get("train_seconds", 0.0) + time.perf_counter() - tic
    self.writer.flush()  # the log reaches the checkpoint's step before the checkpoint exists
    self.ckpt.save(int(jax.device_get(self.state.step)), self.state, self.host, force=True)
    self.host.pop("carry")

  def end_epoch(self, epoch: int, train_means: dict[str, np.ndarray], seen: int, tic: float) -> None:
    """Evaluates, logs and checkpoints after a finished epoch."""
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
      print(f"{self.label}epoch {epoch + 1:3d}/{config.epochs}: loss {record.get('train/loss', float('nan')):.4f}, "
            f"train acc {record.get('train/accuracy', 0):.2f}%, {evaluation_text}"
            f"{record['train/images_per_s']:.0f} img/s{extra}", flush=True)
    self.writer.flush()
    if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs or is_best:
      self.ckpt.save(step_now, self.state, self.host, is_best=is_best)

  def close(self) -> None:
    self.ckpt.close()
    self.writer.close()


@dataclasses.dataclass
class Program:
  """What the members train with: the state (one member's, or the members' stacked along axis 0
  when ``stacked``), the compiled steps ``fn(state, batch, teacher_vars, epoch[, values])``, and
  the source of each epoch's host batches."""
  state: PyTree
  train_fn: Callable
  meta_fn: Callable
  teacher_vars: Any
  host_batches: Callable[[int, int], Iterator]   # (epoch, first batch) -> host batches
  stacked: bool = False
  values: dict = dataclasses.field(default_factory=dict)  # per-member tunable scalars (stacked)
  lr_fn: Callable[[int], Any] | None = None                # the learning rate at a step (per member)
  scanned: Any = None        # dispatch.Scanned: device-resident data, scan_steps per dispatch
  dispatches: int = 0        # dispatches this session (the preemption sync point's counter)

  def step(self, fn: Callable, raw: PyTree, epoch: jax.Array) -> dict:
    args = (self.state, raw, self.teacher_vars, epoch) + ((self.values,) if self.stacked else ())
    self.state, metrics = fn(*args)
    return metrics

  def close(self) -> None:
    if self.scanned is not None:
      self.scanned.close()

  def member_of(self, tree: PyTree, k: int) -> PyTree:
    return jax.tree.map(lambda x: np.asarray(x)[k], tree) if self.stacked else tree

  def lr(self, step: int, members: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(self.lr_fn(step), np.float64), (members,))


def _active(members: list[Member]) -> list[int]:
  return [k for k, m in enumerate(members) if m.stopped is None]


def check_finite(program: Program, members: list[Member]) -> None:
  """Stops each member that recorded a non-finite term: a single run raises NonFiniteLossError;
  a replica stops for good (frozen at its last good state) and the others go on."""
  nonfinite = np.asarray(jax.device_get(program.state.nonfinite))
  for k in _active(members):
    member = members[k]
    message = member.setup.steps.nonfinite_message(program.member_of(nonfinite, k), member.setup.steps_per_epoch)
    if not message:
      continue
    member.stopped = message
    if not program.stacked:
      member.close()
      raise NonFiniteLossError(message)
    if not member.quiet:
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
      members[k].write_window(step, program.member_of(means, k), float(lr[k]))


def run_epoch(program: Program, members: list[Member], epoch: int, first_batch: int,
              stop: runs.StopRequest) -> tuple[StepLog, int, float, bool]:
  """Trains one epoch (from ``first_batch``); returns (its step log, images seen per member, start
  time, whether it was interrupted). Every ``log_every`` steps the window before the last one
  (finished, so reading it stalls nothing) is logged and checked for non-finite terms."""
  setup, config = members[0].setup, members[0].setup.config
  spe = setup.steps_per_epoch
  quiet = all(m.quiet for m in members)
  # The bar counts finished steps (not dispatched ones) and is off when stderr is no terminal.
  bar = tqdm(total=spe, initial=first_batch, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
             disable=True if quiet else None, unit="step")
  log = StepLog(config.log_every, first_batch, program_carry(program, members))
  tic, seen, done, interrupted = time.perf_counter(), 0, 0, False
  dispatches = (program.scanned.epoch(program, epoch, first_batch) if program.scanned is not None
                else dispatch.streamed(program, setup, epoch, first_batch))
  for stepped in dispatches:
    for idx, metrics in stepped:
      seen += config.batch_size
      ready = log.add(idx, metrics)
      while done < len(log.steps) and log.steps[done]["loss"].is_ready():
        done += 1
        bar.update(1)
      log_windows(program, members, epoch, ready)
      if ready and not program.stacked:
        means = ready[-1][1]
        bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{100 * means['accuracy']:.1f}",
                        img_s=f"{seen / (time.perf_counter() - tic):.0f}")
    # The preemption sync point counts dispatches (JAX's sync manager wants consecutive calls).
    program.dispatches += 1
    global_step = epoch * spe + idx + 1
    if (stop.requested or global_step == config.stop_at_step
        or members[0].ckpt.reached_preemption(program.dispatches)):
      interrupted = True
      break
  bar.update(len(log.steps) - done)
  bar.close()
  return log, seen, tic, interrupted


def program_carry(program: Program, members: list[Member]) -> dict | None:
  """The metric sums the members carried over a mid-epoch stop (stacked for a stacked program)."""
  carries = [m.host.pop("carry", None) for m in members]
  if not program.stacked:
    return carries[0]
  if any(c is None for c in carries):
    return None
  def stacked(parts):
    if parts[0] is None:
      return None
    return {"sums": {k: np.stack([np.asarray(p["sums"][k]) for p in parts]) for k in parts[0]["sums"]},
            "counts": dict(parts[0]["counts"])}
  return {part: stacked([c[part] for c in carries]) for part in ("epoch", "window")}


def member_carry(program: Program, carry: dict, k: int) -> dict:
  """Member k's slice of the program's carry (StepLog.carry)."""
  if not program.stacked:
    return carry
  return {part: None if v is None else {"sums": {key: np.asarray(x)[k].tolist() for key, x in v["sums"].items()},
                                         "counts": v["counts"]}
          for part, v in carry.items()}


def run(program: Program, members: list[Member], stop: runs.StopRequest,
        member_state: Callable[[int], PyTree]) -> bool:
  """Trains every active member to ``config.epochs`` (from the step its checkpoint holds);
  returns whether it was interrupted (a stop request, ``stop_at_step`` or a preemption point),
  after checkpointing every active member where it stopped. ``member_state(k)``: member k's
  state from the program's, for its evaluation and checkpoints."""
  setup = members[0].setup
  spe, epochs = setup.steps_per_epoch, setup.config.epochs
  active = _active(members)
  start_step = max(int(np.max(jax.device_get(members[k].state.step))) for k in active) if active else epochs * spe
  for epoch in range(start_step // spe, epochs):
    if not _active(members):
      break
    first_batch = start_step % spe if epoch == start_step // spe else 0
    log, seen, tic, interrupted = run_epoch(program, members, epoch, first_batch, stop)
    check_finite(program, members)
    log_windows(program, members, epoch, log.flush())
    if interrupted:
      step_now = int(np.max(jax.device_get(program.state.step)))
      carry = log.carry(step_now - epoch * spe - 1)
    for k in _active(members):
      member = members[k]
      member.state = member_state(k)
      if interrupted:
        member.save_stop(member_carry(program, carry, k), tic)
      else:
        means = log.epoch_means()
        member.end_epoch(epoch, program.member_of(means, k), seen, tic)
    if interrupted:
      for member in members:
        member.ckpt.wait()
      return True
  return False
