"""The trainer: config -> data -> method -> state -> jitted steps -> epoch loop with evaluation,
checkpoints and metrics. Everything that differs between methods is behind the ``Method``
hooks (``mmkd_jax.methods``); the steps themselves are in ``mmkd_jax.steps``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax import checkpoint, dispatch, evaluation, parallel, runs, storage, workdir_lock
from mmkd_jax.loop import Member, Program
from mmkd_jax import loop as loop_lib
from mmkd_jax import config as config_lib
from mmkd_jax.data import pipeline, sources
from mmkd_jax.methods import METHODS, Method, MethodSpec, RunInfo, TeacherView, build_method
from mmkd_jax.metrics import MetricWriter, eval_name
from mmkd_jax.models import MODELS, get_model
from mmkd_jax.errors import ConfigError
from mmkd_jax.steps import Steps, TrainState, init_state, make_steps
from mmkd_jax.teachers import Teacher, feature_shapes, fingerprint

PyTree = Any


@dataclasses.dataclass
class Setup:
  config: ml_collections.ConfigDict   # resolved
  dataset: sources.Dataset
  steps_per_epoch: int
  method: Method
  teachers: list[Teacher]
  cache: Any
  steps: Steps
  mesh: Any

  @property
  def spec(self) -> sources.DatasetSpec:
    return self.dataset.spec

  @property
  def method_spec(self) -> MethodSpec:
    """What the method declared when it registered: its terms, bilevel, needs_teachers."""
    return METHODS.get(self.config.method)


def _check_feature_layer(model, image_shape, layer: int, what: str) -> tuple[int, ...]:
  feats, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                            jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  if not -len(feats) <= layer < len(feats) or len(feats[layer].shape) != 4:
    raise ConfigError(f"config.feature_layer: feat[{layer}] of {what} is not a feature map (it returns "
                      f"{len(feats)} features of shapes {[tuple(f.shape[1:]) for f in feats]})")
  return tuple(feats[layer].shape[1:])


def run_info(config: ml_collections.ConfigDict, spec: sources.DatasetSpec, teachers: Sequence[Teacher],
             student, bn_groups: int) -> RunInfo:
  """What the method may know: the student, the teachers' feature shapes and classifiers."""
  shapes = feature_shapes(teachers, spec.image_shape, config.feature_layer) if teachers else []
  views = []
  for t, shape in zip(teachers, shapes):
    classifier = MODELS.get(t.arch).classifier
    head = None
    if classifier is not None:
      head = (np.asarray(t.variables["params"][classifier]["kernel"]),
              np.asarray(t.variables["params"][classifier]["bias"]))
    views.append(TeacherView(t.name, t.arch, tuple(shape), head))
  return RunInfo(student, spec.num_classes, config.batch_size, config.feature_layer, tuple(views),
                 bn_groups, config.dataset)


def build(config: ml_collections.ConfigDict, teachers: Sequence[Teacher] = (), cache: Any = None,
          dataset: sources.Dataset | None = None, mesh: Any = None) -> Setup:
  """Everything a run needs; ``mesh``: the device mesh (default: every device as one
  data-parallel group; replicas pass their ('replica', 'data') mesh)."""
  config = config_lib.resolve(config)
  dataset = dataset or sources.open_dataset(config)
  spe = pipeline.steps_per_epoch(dataset.num_train, config.batch_size)
  mesh = mesh if mesh is not None else parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  bn_groups = config.batch_norm_groups or (1 if config.sync_batch_norm else parallel.data_devices(mesh))
  if config.batch_size % bn_groups:
    raise ConfigError(f"config.batch_norm_groups: {bn_groups} groups do not divide batch_size {config.batch_size}")
  student = get_model(config.student, dataset.spec.num_classes, bn_groups, config.dtype)
  method = build_method(config, run_info(config, dataset.spec, teachers, student, bn_groups))
  needs_teachers = METHODS.get(config.method).needs_teachers
  if needs_teachers and not teachers:
    raise ConfigError(f"config.teachers: method {config.method!r} needs teachers; none are loaded")
  if needs_teachers:
    _check_feature_layer(student, dataset.spec.image_shape, config.feature_layer, f"the student {config.student}")
  steps = make_steps(config, method, dataset.spec, teachers, mesh, spe)
  return Setup(config, dataset, spe, method, list(teachers), cache, steps, mesh)


def _host_batch(setup: Setup, indices: np.ndarray, epoch: int) -> dict[str, Any]:
  """Extra per-example arrays joined to image batches: the replay and the cached teacher outputs."""
  if setup.cache is not None and setup.method_spec.needs_teachers and not setup.steps.online:
    return setup.cache.lookup(indices, epoch)
  return {"replay": np.full(len(indices), epoch, np.int32)}


def replay_of(setup: Setup, epoch: int) -> int:
  """The augmentation replay of an epoch: the cache's (epoch mod its replays) with precomputed
  teachers, else the epoch itself (a fresh view every epoch)."""
  if setup.cache is not None and setup.method_spec.needs_teachers and not setup.steps.online:
    return epoch % setup.config.num_replays
  return epoch


def train_batches(setup: Setup, epoch: int, start_batch: int = 0):
  """This process's training batches of ``epoch`` from ``start_batch`` on, with joined arrays."""
  c = setup.config
  view = (c.augmentation_seed, replay_of(setup, epoch)) if setup.spec.host_transform else None
  return pipeline.train_batches(setup.dataset.train, setup.spec, c.batch_size, c.seed, epoch, start_batch,
                                jax.process_index(), jax.process_count(),
                                join=lambda i, e: _host_batch(setup, i, e), train_view=view,
                                subset=setup.dataset.train_indices, labels=setup.dataset.train_labels)


def example_batch(setup: Setup) -> dict[str, Any]:
  """This process's first training batch, for shapes at initialisation."""
  return next(iter(train_batches(setup, 0)))


def initial_state(setup: Setup) -> TrainState:
  return init_state(setup.steps, example_batch(setup), setup.config.seed)


def with_pretrained_student(setup: Setup, state: TrainState) -> TrainState:
  """Step 0 from ``config.student_checkpoint``'s weights (its classifier replaced by the random
  one of ``state`` when ``checkpoint_head=reinit``)."""
  config = setup.config
  from mmkd_jax.teachers import convert  # pylint: disable=import-outside-toplevel
  initial = {"params": state.params["student"], "batch_stats": state.model_state["student"]}
  _, loaded = convert.load_pretrained(config.student, setup.spec.num_classes, config.student_checkpoint,
                                      setup.spec.image_shape, config.trust_pickle, config.checkpoint_head,
                                      jax.device_get(initial))
  return state.replace(params={**state.params, "student": loaded["params"]},
                       model_state={**state.model_state, "student": loaded.get("batch_stats", {})})


def eval_function(setup: Setup, quiet: bool = True) -> Callable[[TrainState, dict[str, Any]], Any]:
  """The compiled evaluation of one member's state on a sharded batch (with the teachers on the
  devices when an evaluator reads them)."""
  eval_step = loop_lib.announced(jax.jit(setup.steps.eval_step), "the evaluation step", quiet)
  if not (setup.steps.evaluators.needs_teachers and setup.teachers):
    return eval_step
  teacher_vars = parallel.copy_to_devices(tuple(t.variables for t in setup.teachers), setup.mesh)
  return lambda state, raw: eval_step(state, raw, teacher_vars)


def evaluate_teachers(setup: Setup) -> dict[str, float]:
  return evaluation.teacher_accuracy(setup.teachers, setup.dataset.test, setup.spec,
                                     setup.config.eval_batch_size, setup.mesh, setup.config.feature_layer)


def restore_or_init(setup: Setup, workdir: str, quiet: bool) -> tuple[TrainState, dict[str, Any], checkpoint.Checkpoints]:
  """The latest checkpoint of ``workdir`` (refused if another run made it) or the initial state,
  with the host-side history and the checkpoint manager."""
  config = setup.config
  state = initial_state(setup)
  ckpt = checkpoint.Checkpoints(workdir, config.keep_checkpoints, async_save=config.async_checkpoints)
  host = {"best_top1": -1.0, "best_epoch": 0, "history": [], "teacher_accuracy": {},
          **runs.run_identity(setup, state)}
  runs.check_resumable(ckpt, host)
  restored = ckpt.restore(state)
  if restored is not None:  # a resumed run never reads student_checkpoint again
    state, host, restored_step = restored
    if not quiet:
      print(f"resumed from checkpoint step {restored_step} in {workdir}")
  elif config.student_checkpoint:
    state = with_pretrained_student(setup, state)
    host["student_init"] = {"checkpoint": storage.absolute(config.student_checkpoint), "head": config.checkpoint_head,
                            "fingerprint": fingerprint(jax.device_get({"params": state.params["student"],
                                                                       "batch_stats": state.model_state["student"]}))}
  return state, host, ckpt


def record_teacher_accuracy(member: Member, accuracy: dict[str, float] | None = None) -> None:
  """Evaluates the teachers once per run (or takes ``accuracy``) and logs it at step 0."""
  host, setup = member.host, member.setup
  if host["teacher_accuracy"] or not setup.teachers:
    return
  host["teacher_accuracy"] = accuracy or evaluate_teachers(setup)
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


def _start(setup: Setup, workdir: str, quiet: bool) -> tuple[Program, Member]:
  """Restores the latest checkpoint (or initialises), replicates, compiles the steps."""
  steps = setup.steps
  member = open_member(setup, workdir, quiet, eval_function(setup, quiet))
  member.state = parallel.copy_to_devices(member.state, setup.mesh)
  teacher_vars = parallel.copy_to_devices(tuple(t.variables for t in setup.teachers), setup.mesh) if steps.online else ()
  program = Program(member.state,
                    loop_lib.announced(jax.jit(steps.train_step, donate_argnums=(0,)), "the training step", quiet),
                    loop_lib.announced(jax.jit(steps.meta_step, donate_argnums=(0,)), "the meta step", quiet),
                    teacher_vars,
                    lambda epoch, first: train_batches(setup, epoch, first), lr_fn=steps.schedule)
  program.scanned = dispatch.open_scanned(setup, program, [setup.config.seed], steps.train_step, steps.meta_step,
                                          lambda epoch: replay_of(setup, epoch), quiet)
  if program.scanned is not None:
    member.eval_batches = program.scanned.data.eval_batches
  record_teacher_accuracy(member)
  return program, member


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Teacher] = (),
                       cache: Any = None, quiet: bool = False) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds checkpoints) and returns the summary. Nothing
  is written before the config, data and teachers are checked, the work directory is locked and
  its checkpoints are found to belong to this run."""
  quiet = quiet or jax.process_index() != 0  # logging and progress from process 0 only
  setup = build(config, teachers, cache)
  storage.makedirs(workdir)
  with workdir_lock.WorkdirLock(workdir):
    return _train(setup, workdir, quiet)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The resolved config beside the checkpoints (they hold it too), written atomically; a valid
  ``--config`` for the same run."""
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def _train(setup: Setup, workdir: str, quiet: bool) -> dict[str, Any]:
  program, member = _start(setup, workdir, quiet)
  write_config(setup.config, workdir)  # only once the checkpoints are known to be this run's
  started = time.time()
  with runs.StopRequest() as stop:
    preempted = loop_lib.run(program, [member], stop, lambda k: program.state)
  program.close()
  member.close()
  summary = run_summary(setup, member.host, "preempted" if preempted else "finished", started)
  summary.update(this_command(member, program))
  if not preempted:
    write_summary(summary, workdir)
  summary["state"] = program.state
  return summary


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
      "code_version": runs.code_version(),
  }


def write_summary(summary: dict[str, Any], workdir: str) -> None:
  if jax.process_index() == 0:
    storage.write_json(storage.join(workdir, "summary.json"), summary)
