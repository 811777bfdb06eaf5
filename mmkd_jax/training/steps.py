"""The train state and the pure, jitted steps: training, meta (bi-level) and evaluation.

``make_steps`` is the one way to build them (the trainer and the benchmarks both use it).
Everything that differs between methods comes from the ``Method`` hooks; nothing here names a
method.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmkd_jax.training import optim
from mmkd_jax.training import parallel
from mmkd_jax.data.augment import augment_for, normalize
from mmkd_jax.data.sources import DatasetSpec
from mmkd_jax.evaluation.evaluators import EvalBatch, Evaluators, build_evaluators
from mmkd_jax.methods import METHODS, Method, MethodSpec, TeacherWeights
from mmkd_jax.runs.metrics import TEACHER_WEIGHTS_PREFIX
from mmkd_jax.methods import bilevel as bilevel_methods
from mmkd_jax.teachers import Teacher, teacher_forward

PyTree = Any
META_TRACKED = ("meta_outer_loss", "hypergrad_norm")


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32, global step; epoch and batch position derive from it
  params: PyTree             # inner parameters: {'student', 'match'?, ...}
  model_state: PyTree        # BatchNorm running statistics, same keys
  opt_state: PyTree
  meta_params: PyTree        # learned weighting parameters ({} when none)
  meta_opt_state: PyTree
  buffer: Any                # the training strategy's extra state: a bi-level method's HardBuffer, else {}
  rng: jax.Array             # uint32 key data
  nonfinite: jax.Array       # int32 (2,): first step with a non-finite term and that term's index


@dataclasses.dataclass(frozen=True)
class Steps:
  """Closes over everything static and exposes the jitted steps."""
  config: ml_collections.ConfigDict
  method: Method
  optimizer: optax.GradientTransformation
  meta_optimizer: optax.GradientTransformation
  spec: DatasetSpec
  teachers: Sequence[Teacher]
  online: bool
  # Sharding of batch-major arrays (the mesh's 'data' axis); None on a single device.
  data_sharding: Any = None
  schedule: Any = None  # the student's learning rate as a function of the step count
  steps_per_epoch: int = 0
  # A replica's own optimiser values (optim.TUNABLE, possibly traced) over the config's.
  optimizer_values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # How the method trains beyond its training step (methods.bilevel: Plain, or Bilevel's buffer,
  # meta schedule and meta step); set by make_steps.
  strategy: Any = bilevel_methods.Plain()

  @property
  def method_spec(self) -> MethodSpec:
    return METHODS.get(self.config.method)

  @property
  def tracked(self) -> tuple[str, ...]:
    """The metrics the NaN guard watches, in the order ``nonfinite`` indexes them."""
    return tuple(f"loss_{t}" for t in self.method_spec.terms) + ("loss",) + META_TRACKED

  def device_batch(self, raw: dict[str, Any], teacher_vars: Sequence[PyTree]) -> dict[str, Any]:
    """Augments (from seed, index, replay) and normalises on device; adds teacher outputs."""
    x = normalize(augment_for(self.spec, raw["image"], raw["index"], raw["replay"], self.config.augmentation_seed),
                  self.spec.mean, self.spec.std)
    batch = {"image": x, "label": raw["label"]}
    if self.method_spec.needs_teachers:
      if self.online:
        logits, feats = teacher_forward(self.teachers, teacher_vars, x, self.config.feature_layer,
                                        self.config.dtype)
      else:
        logits, feats = raw["teacher_logits"], raw["teacher_feat"]
      batch["teacher_logits"] = jax.lax.stop_gradient(logits.astype(jnp.float32))
      batch["teacher_feat"] = tuple(jax.lax.stop_gradient(f.astype(jnp.float32)) for f in feats)
    return batch

  def train_step(self, state: TrainState, raw: dict[str, Any], teacher_vars: Sequence[PyTree],
                 epoch: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    batch = self.device_batch(raw, teacher_vars)
    batch["epoch"] = epoch
    grad_fn = jax.value_and_grad(self.method.train_objective, has_aux=True)
    (loss, (model_state, aux)), grads = grad_fn(state.params, state.model_state, state.meta_params, batch)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    frozen = self.method.frozen(state.params, epoch)
    if frozen is not None:  # frozen parameters do not move at all (weight decay included)
      updates = jax.tree.map(lambda u, f: jnp.where(f, jnp.zeros_like(u), u), updates, frozen)
    params = optax.apply_updates(state.params, updates)
    rng, buffer_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    logits = aux["logits"]
    buffer = self.strategy.after_step(state.buffer, batch, logits, buffer_key)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               **{f"loss_{k}": v for k, v in aux["terms"].items()}}
    teacher_weights = aux.get("teacher_weights", TeacherWeights())
    for kind, weights in teacher_weights.items():
      metrics[f"{TEACHER_WEIGHTS_PREFIX}{kind}"] = jnp.mean(weights, axis=0)
    metrics.update({f"diag_{k}": v for k, v in aux.get("diagnostics", {}).items()})
    if teacher_weights.logits is not None:
      # Per-class sums and counts; their ratio over an epoch is each class's mean teacher weight.
      onehot = jax.nn.one_hot(batch["label"], self.spec.num_classes, dtype=jnp.float32)
      metrics["class_weight_sums"] = onehot.T @ teacher_weights.logits.astype(jnp.float32)
      metrics["class_counts"] = jnp.sum(onehot, axis=0)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state, buffer=buffer, rng=jax.random.key_data(rng))
    return new_state.replace(nonfinite=self.track_nonfinite(state, metrics)), metrics

  def meta_step(self, state: TrainState, raw: dict[str, Any], teacher_vars: Sequence[PyTree],
                epoch: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """The strategy's meta step (a bi-level method's: ``methods.bilevel.Bilevel.meta_update``)."""
    new, metrics = self.strategy.meta_update(self.meta_inputs(), state, raw, teacher_vars, epoch)
    return new.replace(nonfinite=self.track_nonfinite(new, metrics)), metrics

  def meta_inputs(self) -> bilevel_methods.MetaInputs:
    """What a meta step needs of these steps."""
    return bilevel_methods.MetaInputs(self.device_batch, self.schedule,
                                      self.optimizer_values.get("weight_decay", self.config.weight_decay),
                                      self.data_sharding, self.meta_optimizer)

  @property
  def evaluators(self) -> Evaluators:
    return build_evaluators(self.config.evaluators, self.spec.num_classes, [t.name for t in self.teachers])

  def eval_step(self, state: TrainState, raw: dict[str, Any], teacher_vars: Sequence[PyTree] = ()) -> dict[str, Any]:
    """The configured evaluators' sums over a batch (``teacher_vars``: for those reading teachers)."""
    x = normalize(raw["image"], self.spec.mean, self.spec.std)
    _, logits = self.method.student.apply(
        {"params": state.params["student"], "batch_stats": state.model_state["student"]}, x, train=False)
    evaluators = self.evaluators
    teacher_logits = None
    if evaluators.needs_teachers and teacher_vars:
      teacher_logits = teacher_forward(self.teachers, teacher_vars, x, self.config.feature_layer)[0]
    return evaluators.sums(EvalBatch(logits, raw["label"], raw["mask"], teacher_logits))

  def track_nonfinite(self, state: TrainState, metrics: dict[str, jax.Array]) -> jax.Array:
    """``state.nonfinite`` updated with the first non-finite tracked metric of this step."""
    present = [i for i, n in enumerate(self.tracked) if n in metrics]
    finite = jnp.stack([jnp.all(jnp.isfinite(metrics[self.tracked[i]])) for i in present])
    first_bad = jnp.asarray(present, jnp.int32)[jnp.argmin(finite)]
    is_new = jnp.logical_and(state.nonfinite[0] < 0, ~jnp.all(finite))
    return jnp.where(is_new, jnp.stack([state.step, first_bad]).astype(jnp.int32), state.nonfinite)

  def nonfinite_message(self, nonfinite: np.ndarray, steps_per_epoch: int) -> str | None:
    step, term = int(nonfinite[0]), int(nonfinite[1])
    return None if step < 0 else describe_nonfinite(self.tracked[term], step, steps_per_epoch)


def describe_nonfinite(term: str, step: int, steps_per_epoch: int) -> str:
  return (f"loss term {term!r} became NaN/inf at step {step} (epoch {step // steps_per_epoch + 1}, batch "
          f"{step % steps_per_epoch}); training stopped and the last good checkpoint is kept. Lower the "
          "learning rate or the loss weights (config.weights.*), or check the teacher outputs.")


def _optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int, values: dict[str, Any]):
  schedule, optimizer = optim.student_optimizer(config, steps_per_epoch, values)
  return schedule, optimizer, optim.torch_adam(values.get("meta.lr", config.meta.lr), config.meta.weight_decay)


def make_steps(config: ml_collections.ConfigDict, method: Method, spec: DatasetSpec,
               teachers: Sequence[Teacher], mesh: Any, steps_per_epoch: int, num_train: int = 0) -> Steps:
  """The steps of a run: the student's schedule and optimiser (``optim.student_optimizer``; the
  reference's multistep SGD by default), Adam for the meta networks, and the method's training
  strategy (``methods.bilevel.strategy_for``; ``num_train``: the training split's size, for a
  bi-level method's meta step on the loader's last batch)."""
  schedule, optimizer, meta_optimizer = _optimizers(config, steps_per_epoch, {})
  return Steps(config, method, optimizer, meta_optimizer, spec, tuple(teachers),
               config.teacher_source == "online",
               parallel.batch_sharding(mesh) if parallel.data_devices(mesh) > 1 else None, schedule,
               steps_per_epoch, strategy=bilevel_methods.strategy_for(config, method, steps_per_epoch, num_train))


def with_values(steps: Steps, values: dict[str, jax.Array]) -> Steps:
  """The same steps with tunable scalars (``replica_spec.TUNABLE``: the optimiser's
  ``optim.TUNABLE`` and ``meta.lr``; the method's ``label_smoothing``, ``temperature``,
  ``weights.<term>``, ``meta.lookahead_weights.<term>``) taken from ``values``,
  which may be traced: how one vmapped program gives each replica its own hyperparameters. The
  structure (which terms are computed, the optimisers' state) stays that of ``steps``."""
  if not values:
    return steps
  method, config = steps.method, steps.config
  optimiser_fields = (*optim.TUNABLE, "meta.lr")
  method_values = {k: v for k, v in values.items()
                   if k not in optimiser_fields and not k.startswith("meta.lookahead_weights.")}
  if method_values:
    if not hasattr(method, "with_values"):
      raise TypeError(f"method {config.method!r} ({type(method).__name__}) has no with_values hook: it does not "
                      f"take per-replica {', '.join(method_values)}")
    method = method.with_values(method_values)
  out = dataclasses.replace(steps, method=method, strategy=steps.strategy.with_method(method).with_values(values))
  if any(k in values for k in optimiser_fields):
    schedule, optimizer, meta_optimizer = _optimizers(
        config, steps.steps_per_epoch, {k: v for k, v in values.items() if k in optimiser_fields})
    out = dataclasses.replace(out, schedule=schedule, optimizer=optimizer, meta_optimizer=meta_optimizer,
                              optimizer_values={k: v for k, v in values.items() if k in optim.TUNABLE})
  return out


def init_state(steps: Steps, example_raw: dict[str, Any], seed: int) -> TrainState:
  """The initial state from a process-local example batch.

  Parameter shapes depend on the *global* batch (MMKD's feature weighter reads B x B Gram
  matrices), so the local rows are tiled to the global batch size; only shapes matter here.
  Every process computes the identical state from the same seed.
  """
  config = steps.config
  local = jax.tree.leaves(example_raw)[0].shape[0]
  if local != config.batch_size:
    example_raw = jax.tree.map(lambda x: np.concatenate([np.asarray(x)] * (config.batch_size // local)),
                               example_raw)
  init_key, state_key = jax.random.split(jax.random.key(seed))
  teacher_vars = tuple(t.variables for t in steps.teachers) if steps.online else ()
  batch = steps.device_batch(jax.tree.map(jnp.asarray, example_raw), teacher_vars)
  params, model_state, meta_params = steps.method.init(init_key, batch)
  buffer = steps.strategy.init_buffer(batch)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=steps.optimizer.init(params), meta_params=meta_params,
                    meta_opt_state=steps.meta_optimizer.init(meta_params), buffer=buffer,
                    rng=jax.random.key_data(state_key), nonfinite=jnp.full((2,), -1, jnp.int32))
