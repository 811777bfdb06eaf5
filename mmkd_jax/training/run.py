"""A run's lifecycle, for one student or R replicas alike: each member's directory (restored or
initialised, its writer, its teacher accuracy), the one builder (``open_program``), the one driver
(``train``), one summary shape and one stop. The command (``mmkd_jax.main``) owns the lock, the
stop request, the dataset and the resolved config, and hands them down; ``train_members`` /
``train_and_evaluate`` compose build, open and train for a caller without a command (a teacher's
training, tests).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.data import sources
from mmkd_jax.runs import checkpoint, storage
from mmkd_jax.runs import identity as run_identity
from mmkd_jax.runs import stop as stops
from mmkd_jax.runs.metrics import MetricWriter, eval_name
from mmkd_jax.teachers import Teacher, fingerprint
from mmkd_jax.training import dispatch, parallel
from mmkd_jax.training.loop import DivergedError, Member, NonFiniteLossError, Program
from mmkd_jax.training import loop as loop_lib
from mmkd_jax.training.replicas import layout_for, replica_values
from mmkd_jax.training import setup as setup_lib
from mmkd_jax.training.setup import Setup
from mmkd_jax.training.steps import TrainState, with_values

PyTree = Any


def restore_or_init(setup: Setup, workdir: str, quiet: bool) -> tuple[TrainState, dict[str, Any], checkpoint.Checkpoints]:
  """The latest checkpoint of ``workdir`` (refused if another run made it) or the initial state,
  with the host-side history and the checkpoint manager."""
  config = setup.config
  state = setup_lib.initial_state(setup)
  ckpt = checkpoint.Checkpoints(workdir, config.keep_checkpoints, async_save=config.async_checkpoints)
  host = {"best_top1": -1.0, "best_epoch": 0, "history": [], "teacher_accuracy": {},
          **run_identity.run_identity(setup, state)}
  run_identity.check_resumable(ckpt, host)
  restored = ckpt.restore(state)
  if restored is not None:  # a resumed run never reads student_checkpoint again
    state, host, restored_step = restored
    if not quiet:
      print(f"resumed from checkpoint step {restored_step} in {workdir}")
  elif config.student_checkpoint:
    state = setup_lib.with_pretrained_student(setup, state)
    host["student_init"] = {"checkpoint": storage.absolute(config.student_checkpoint), "head": config.checkpoint_head,
                            "fingerprint": fingerprint(jax.device_get({"params": state.params["student"],
                                                                       "batch_stats": state.model_state["student"]}))}
  return state, host, ckpt


def record_teacher_accuracy(member: Member, accuracy: dict[str, float] | None = None) -> None:
  """Evaluates the teachers once per run (or takes ``accuracy``) and logs it at step 0."""
  host, setup = member.host, member.setup
  if host["teacher_accuracy"] or not setup.teachers:
    return
  host["teacher_accuracy"] = accuracy or setup_lib.evaluate_teachers(setup)
  if not member.quiet and not accuracy:  # replicas share one evaluation: printed once
    print("teachers (test top-1): " + ", ".join(f"{k.split('/')[1]} {v:.2f}%"
                                                for k, v in host["teacher_accuracy"].items()))
  member.writer.write(0, host["teacher_accuracy"])


def resume_step(state: TrainState) -> int:
  """The step a run continues from; -1 for a fresh start (its log starts empty)."""
  step = int(np.max(jax.device_get(state.step)))
  return step if step > 0 else -1


def open_member(setup: Setup, workdir: str, quiet: bool, eval_fn: Any, label: str = "") -> Member:
  """A run's bookkeeping: its latest checkpoint restored (or its initial state), its writer;
  the teachers' accuracy recorded once."""
  state, host, ckpt = restore_or_init(setup, workdir, quiet)
  return Member(setup, workdir, quiet, state, host, ckpt, MetricWriter(workdir, resume_step(state)), eval_fn, label,
                restored_step=max(resume_step(state), 0))


def this_command(member: Member, program: Program) -> dict[str, Any]:
  """What this command did to a run (summary.json): the checkpoint step it resumed from (0: a
  fresh start), the steps it trained, and where the training data lived (host or device)."""
  steps_now = int(np.max(jax.device_get(member.state.step)))
  return {"resumed_from_step": member.restored_step, "steps_trained": steps_now - member.restored_step,
          "data_placement": "device" if program.scanned is not None else "host"}


def open_program(setup: Setup, plans: Sequence[tuple[str, ml_collections.ConfigDict]], workdir: str,
                 quiet: bool) -> tuple[Program, list[Member]]:
  """The one builder: each member's directory (``workdir`` itself for a single run, else
  ``workdir/<name>``) restored or initialised, its config written once its checkpoints are known
  to be its own, and the program that steps them all (``training.replicas``: one run's plain
  steps, or R replicas stacked). ``plans``: (name, resolved config) per member
  (``config.member_configs``); ``setup``: built from the command's config (its ``replicas`` give each member's tunable values)."""
  steps = setup.steps
  layout = layout_for(setup.config, len(plans))
  eval_fn = setup_lib.eval_function(setup, quiet)
  members: list[Member] = []
  for k, (name, config) in enumerate(plans):
    member_setup = dataclasses.replace(setup, config=config)
    directory = storage.join(workdir, name) if name else workdir
    storage.makedirs(directory)
    member = open_member(member_setup, directory, quiet, eval_fn, label=f"replica {k} ({name}): " if name else "")
    write_config(config, directory)  # only once the checkpoints are known to be this run's
    record_teacher_accuracy(member, members[0].host["teacher_accuracy"] if members else None)
    member.stopped = steps.nonfinite_message(np.asarray(member.state.nonfinite), setup.steps_per_epoch)
    member.stop_status = "nonfinite" if member.stopped else ""
    members.append(member)
  values = layout.place_values(replica_values(setup.config, [c for _, c in plans]) if len(plans) > 1 else {}, setup.mesh)
  teacher_vars = parallel.copy_to_devices(tuple(t.variables for t in setup.teachers), setup.mesh) if steps.online else ()
  train_fn, meta_fn = layout.compile(steps, quiet, values)
  program = Program(layout.place([m.state for m in members], setup.mesh), train_fn, meta_fn, teacher_vars,
                    lambda epoch, first: layout.host_batches([setup_lib.train_batches(m.setup, epoch, first) for m in members]),
                    layout, values, lr_fn=with_values(steps, values).schedule)
  program.scanned = dispatch.open_scanned(setup, program, [c.seed for _, c in plans], *layout.raw_steps(steps),
                                          lambda epoch: setup_lib.replay_of(setup, epoch), quiet)
  for member in members if program.scanned is not None else ():
    member.eval_batches = program.scanned.data.eval_batches
  return program, members


def train(program: Program, members: list[Member], stop: stops.StopRequest) -> tuple[list[dict[str, Any]], bool]:
  """The one driver: trains the members to their last epoch (or a stop), closes them and returns
  (each member's summary, whether the command was stopped). Finished members' summaries are
  written; when every member stopped on a non-finite or diverging loss, that is raised instead
  (one member: its own message)."""
  started = time.time()
  try:
    preempted = loop_lib.run(program, members, stop)
  finally:
    program.close()
    for member in members:
      member.close()
  if not preempted and all(m.stopped for m in members):
    message = members[0].stopped if len(members) == 1 else "every replica stopped: " + "; ".join(
        f"replica {k}: {m.stopped}" for k, m in enumerate(members))
    raise (DivergedError if members[0].stop_status == "diverged" else NonFiniteLossError)(message)
  summaries = []
  for k, member in enumerate(members):
    summary = run_summary(member.setup, member.host, member.stop_status or ("preempted" if preempted else "finished"),
                          started)
    summary.update(this_command(member, program), member={"index": k, "of": len(members), "workdir": member.workdir})
    if member.stopped:
      summary["stopped"] = member.stopped
    if not preempted:
      write_summary(summary, member.workdir)
    summaries.append(summary)
  return summaries, preempted


def open_members(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Teacher] = (), cache: Any = None,
                 quiet: bool = False, dataset: sources.Dataset | None = None) -> tuple[Program, list[Member]]:
  """Build and open the members of ``config`` (resolved): ``open_program`` over the setup of the
  command's config. The program's structure (which terms the step computes) and the replicas'
  tunable values come from that config, which names the replicas; each member trains under its
  own config (``config.member_configs``)."""
  setup = setup_lib.build(config, teachers, cache, dataset, mesh=parallel.data_mesh(int(config.replica_shards)))
  return open_program(setup, config_lib.member_configs(config), workdir, quiet)


def train_members(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Teacher] = (), cache: Any = None,
                  quiet: bool = False, dataset: sources.Dataset | None = None,
                  stop: stops.StopRequest | None = None) -> dict[str, Any]:
  """Build, open and train the members of ``config`` (resolved) in ``workdir``; returns
  {"summaries": [...], "preempted": bool, "state": the program's state}. The caller owns the
  lock; ``stop``: the command's stop request (default: one for this call)."""
  quiet = quiet or jax.process_index() != 0  # logging and progress from process 0 only
  program, members = open_members(config, workdir, teachers, cache, quiet, dataset)
  if stop is None:
    with stops.StopRequest() as stop:
      summaries, preempted = train(program, members, stop)
  else:
    summaries, preempted = train(program, members, stop)
  return {"summaries": summaries, "preempted": preempted, "state": program.state}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Teacher] = (),
                       cache: Any = None, quiet: bool = False, stop: stops.StopRequest | None = None,
                       dataset: sources.Dataset | None = None) -> dict[str, Any]:
  """One run (``config`` resolved, no replicas): its summary, with the final ``state``."""
  result = train_members(config, workdir, teachers, cache, quiet, dataset, stop)
  return dict(result["summaries"][0], state=result["state"])


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The resolved config beside the checkpoints (they hold it too), written atomically; a valid
  ``--config`` for the same run."""
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def run_summary(setup: Setup, host: dict[str, Any], status: str, started: float) -> dict[str, Any]:
  """What ``summary.json`` says about a run: results, setting, teachers, time, code version."""
  config = setup.config
  name = eval_name(setup.spec)
  last = next((r for r in reversed(host["history"]) if f"{name}/top1" in r), {})  # the last evaluated epoch
  return {
      "status": status, "method": config.method, "student": config.student, "dataset": config.dataset,
      "seed": config.seed, "epochs_completed": len(host["history"]), "epochs": config.epochs,
      "steps_total": config.epochs * setup.steps_per_epoch,
      "final_top1": last.get(f"{name}/top1"), "final_top5": last.get(f"{name}/top5"),  # top-5: over 5 classes only
      "eval_split": setup.spec.test_split, "best_chosen_on": host.get("best_chosen_on", setup.spec.test_split),
      "best_top1": host["best_top1"], "best_epoch": host["best_epoch"],
      "teacher_accuracy": host["teacher_accuracy"],
      **({"student_init": host["student_init"]} if "student_init" in host else {}),
      "setting": {"teacher_source": config.teacher_source,
                  **({"num_replays": config.num_replays, "cache_dtype": config.cache_dtype,
                      "cache_logits_dtype": config.cache_logits_dtype}
                     if config.teacher_source == "precomputed" and setup.teachers else {}),
                  "train_split": setup.spec.train_split, "eval_split": setup.spec.test_split,
                  "hypergradient": config.meta.hypergradient if setup.method_spec.bilevel else None},
      "teachers": [{"name": t.name, "arch": t.arch, "fingerprint": t.fingerprint} for t in setup.teachers],
      "wall_seconds": host.get("train_seconds", time.time() - started),  # every session of the run
      "stage_seconds": {"teacher_training": sum(t.train_seconds or 0.0 for t in setup.teachers),
                        "precompute": getattr(setup.cache, "seconds", 0.0) if setup.cache is not None else 0.0,
                        "student": host.get("train_seconds", time.time() - started)},
      "code_version": run_identity.code_version(),
  }


def write_summary(summary: dict[str, Any], workdir: str) -> None:
  if jax.process_index() == 0:
    storage.write_json(storage.join(workdir, "summary.json"), summary)
