"""A run's setup: from its resolved config, the dataset, model, method, optimiser and jitted steps
(``build``), and what feeds them: the training batches of an epoch, the initial state, the
compiled evaluation. Everything that differs between methods is behind the ``Method`` hooks
(``mmkd_jax.methods``); the steps are in ``mmkd_jax.training.steps``, the run's lifecycle in
``mmkd_jax.training.run``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.data import pipeline, sources
from mmkd_jax.errors import ConfigError
from mmkd_jax.evaluation import evaluate as evaluation
from mmkd_jax.methods import METHODS, Method, MethodSpec, RunInfo, TeacherView, build_method
from mmkd_jax.models import MODELS, get_model
from mmkd_jax.runs import progress
from mmkd_jax.teachers import Teacher, convert, feature_shapes
from mmkd_jax.training import parallel
from mmkd_jax.training.steps import Steps, TrainState, init_state, make_steps

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
  """Everything a run needs, from its resolved config (``dataset``: opened already by the command);
  ``mesh``: the device mesh (default: every device as one data-parallel group; replicas pass
  their ('replica', 'data') mesh). Nothing is written: a setup that cannot be built refuses the
  command before its first write."""
  config = config_lib.require_resolved(config)
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
  steps = make_steps(config, method, dataset.spec, teachers, mesh, spe, dataset.num_train)
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
  initial = {"params": state.params["student"], "batch_stats": state.model_state["student"]}
  _, loaded = convert.load_pretrained(config.student, setup.spec.num_classes, config.student_checkpoint,
                                      setup.spec.image_shape, config.trust_pickle, config.checkpoint_head,
                                      jax.device_get(initial))
  return state.replace(params={**state.params, "student": loaded["params"]},
                       model_state={**state.model_state, "student": loaded.get("batch_stats", {})})


def eval_function(setup: Setup, quiet: bool = True) -> Callable[[TrainState, dict[str, Any]], Any]:
  """The compiled evaluation of one member's state on a sharded batch (with the teachers on the
  devices when an evaluator reads them)."""
  eval_step = progress.announced(jax.jit(setup.steps.eval_step), "the evaluation step", quiet)
  if not (setup.steps.evaluators.needs_teachers and setup.teachers):
    return eval_step
  teacher_vars = parallel.copy_to_devices(tuple(t.variables for t in setup.teachers), setup.mesh)
  return lambda state, raw: eval_step(state, raw, teacher_vars)


def evaluate_teachers(setup: Setup) -> dict[str, float]:
  return evaluation.teacher_accuracy(setup.teachers, setup.dataset.test, setup.spec,
                                     setup.config.eval_batch_size, setup.mesh, setup.config.feature_layer)
