"""The one interface between the trainer and a distillation method, and the method registry.

A method is one module: its math as plain functions, a class implementing ``Method``, and a
registration that names its loss terms with their default weights, its own config section and
its per-dataset presets::

    @register("mine", terms={"ce": 1.0, "kd": 1.0}, section={"sharpness": 2.0})
    def build(config, run: RunInfo) -> Method:
      return Mine(run, loss_weights(config), sharpness=config.mine.sharpness)

What a method *is* (its terms, whether it is bi-level, whether it reads teachers) is declared once,
in ``register``; the trainer reads it from the registered ``MethodSpec``, the method's weights
from ``loss_weights(config)``.

The trainer only calls the ``Method`` hooks below. Loss weights have one meaning for every
method: a method returns its *raw* terms (``ce``: cross-entropy on labels; ``kd``: the logit
distillation term; ``feat``: the feature term; any other it declares), and the weighted total is
``sum_k config.weights.<k> * term_k``, formed here, not inside the method. Bi-level methods also
have look-ahead weights (``config.meta.lookahead_weights.<k>``, default: the training weight,
``ce`` 0 as in MMKD).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence, TypedDict, runtime_checkable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax.distill import hard_buffer, losses
from mmkd_jax.errors import ConfigError
from mmkd_jax.registry import Registry, origin_of

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class TeacherWeights:
  """The per-sample weights (B, T) a method puts on each teacher: on their logits (the KD term)
  and on their features. The trainer logs their batch means (``teacher_weights/<kind>/<teacher>``)
  and the per-class means of ``logits``; experiments/routing.py reads ``logits``."""
  logits: Array | None = None
  feature: Array | None = None

  def items(self) -> list[tuple[str, Array]]:
    """(kind, weights) of the kinds the method reports."""
    return [(kind, w) for kind, w in (("logits", self.logits), ("feature", self.feature)) if w is not None]


class MethodOutputs(TypedDict, total=False):
  """What an objective returns beside its loss and model state, declared: the trainer logs the raw
  ``terms``, reads the student's ``logits`` (accuracy, the hard buffer) and, for a method that
  weights its teachers, its ``teacher_weights`` (batch means and per-class means in the logs;
  experiments/routing.py); ``diagnostics`` are logged as ``train/diag/<name>``. A method may add
  its own entries (read by its tests and experiments)."""
  terms: dict[str, Array]
  logits: Array
  teacher_weights: TeacherWeights
  diagnostics: dict[str, Array]


# objective(params, model_state, meta_params, batch) -> (loss, (model_state, outputs))
Objective = Callable[[PyTree, PyTree, PyTree, dict], tuple[Array, tuple[PyTree, MethodOutputs]]]


@dataclasses.dataclass(frozen=True)
class TeacherView:
  """What a method may know about one teacher (its weights stay with the trainer)."""
  name: str
  arch: str
  feature_shape: tuple[int, int, int]                  # (H, W, C) of feat[feature_layer]
  head: tuple[np.ndarray, np.ndarray] | None = None    # its classifier (kernel, bias), if known


@dataclasses.dataclass(frozen=True)
class RunInfo:
  """What a method needs from the run: the student, the teachers, the data's shape."""
  student: nn.Module
  num_classes: int
  batch_size: int
  feature_layer: int = -2
  teachers: tuple[TeacherView, ...] = ()
  bn_groups: int = 1
  dataset: str = ""

  @property
  def num_teachers(self) -> int:
    return len(self.teachers)

  @property
  def teacher_channels(self) -> tuple[int, ...]:
    return tuple(t.feature_shape[-1] for t in self.teachers)

  @property
  def teacher_shapes(self) -> tuple[tuple[int, int, int], ...]:
    return tuple(tuple(t.feature_shape) for t in self.teachers)


@runtime_checkable
class Method(Protocol):
  """The hooks the trainer calls; nothing else about a method is known outside its module (its
  terms, ``bilevel`` and ``needs_teachers`` are its ``MethodSpec``'s)."""

  def init(self, rng: Array, batch: dict[str, Any]) -> tuple[PyTree, PyTree, PyTree]:
    """(params trained by the student optimiser, model_state, meta_params)."""

  def train_objective(self, params: PyTree, model_state: PyTree, meta_params: PyTree,
                      batch: dict[str, Any]) -> tuple[Array, tuple[PyTree, MethodOutputs]]:
    """The loss of a training step (an ``Objective``), with its ``MethodOutputs``: the raw
    ``terms``, the student's ``logits`` and, for a method that weights its teachers, its
    ``teacher_weights``."""

  def objective(self, weights: "LossWeights") -> Objective:
    """The objective of the method's terms under other ``weights`` (a bi-level method's look-ahead
    steps: ``methods.bilevel.lookahead_objectives``)."""

  def outer_objective(self, params: PyTree, model_state: PyTree, meta_params: PyTree,
                      batch: dict[str, Any]) -> tuple[Array, tuple[PyTree, MethodOutputs]]:
    """Bi-level: the loss after the look-ahead whose gradient trains ``meta_params``."""

  def frozen(self, params: PyTree, epoch: Array) -> PyTree | None:
    """A pytree of booleans over ``params`` (True: must not change this step), or None."""

  def with_values(self, values: Mapping[str, Array]) -> "Method":
    """Optional (per-replica hyperparameters, ``config.replicas``): a copy whose tunable scalars
    (``temperature``, ``weights.<term>``, ``meta.lookahead_weights.<term>``) are taken from
    ``values``, which may be traced; which terms are computed stays as it is."""


# ----------------------------------------------------------------------------------------
# Loss weights.


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """``total = sum_k w_k * term_k`` over the terms in order; zero-weight terms are skipped,
  unit weights are not multiplied (the same floating-point sum a hand-written loss gives).
  ``traced``: per-term weights given as (possibly traced) arrays (a replica's own values,
  ``steps.with_values``); they multiply their term, whose presence ``values`` still decides.
  ``label_smoothing``: of the ``ce`` term (``smooth_labels``), a float or a replica's array."""
  values: tuple[tuple[str, float], ...]
  feat_from_epoch: int = 0   # the feature term counts from this (0-based) epoch on
  traced: tuple[tuple[str, Any], ...] = ()
  label_smoothing: Any = 0.0

  def __getitem__(self, term: str) -> float:
    return dict(self.values).get(term, 0.0)

  def with_values(self, weights: Mapping[str, Any]) -> "LossWeights":
    return dataclasses.replace(self, traced=tuple({**dict(self.traced), **weights}.items()))

  def smooth_labels(self, terms: dict[str, Array], logits: Array | None) -> dict[str, Array]:
    """``terms`` with the ``ce`` term smoothed (unchanged without smoothing)."""
    if (isinstance(self.label_smoothing, float) and self.label_smoothing == 0.0) or "ce" not in terms:
      return terms
    if logits is None:
      raise ValueError("label smoothing needs the student's logits among the method's outputs ('logits')")
    return {**terms, "ce": losses.smooth_labels(terms["ce"], logits, self.label_smoothing)}

  def total(self, terms: Mapping[str, Array], epoch: Array | int = 0) -> Array:
    acc, traced = None, dict(self.traced)
    for name, w in self.values:
      if w == 0:
        continue
      if name in traced:
        value = traced[name] * terms[name]
      else:
        value = terms[name] if w == 1 else w * terms[name]
      if name == "feat" and self.feat_from_epoch > 0:
        value = jnp.where(jnp.asarray(epoch) >= self.feat_from_epoch, value, jnp.zeros_like(value))
      acc = value if acc is None else acc + value
    return jnp.zeros(()) if acc is None else acc


def method_terms(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The raw loss terms the configured method registered."""
  return tuple(METHODS.get(config.method).terms)


def loss_weights(config: ml_collections.ConfigDict) -> LossWeights:
  """The configured training weights of the method's terms (a resolved config)."""
  return LossWeights(tuple((t, float(config.weights[t])) for t in method_terms(config)),
                     int(config.feat_from_epoch or 0), label_smoothing=float(config.get("label_smoothing", 0.0)))


def lookahead_loss_weights(config: ml_collections.ConfigDict) -> LossWeights:
  """The look-ahead's weights (its ``ce`` smoothed as the training step's)."""
  return LossWeights(tuple((t, float(config.meta.lookahead_weights[t])) for t in method_terms(config)),
                     label_smoothing=float(config.get("label_smoothing", 0.0)))


# ----------------------------------------------------------------------------------------
# Shared pieces of methods.


def apply_student(student: nn.Module, params: PyTree, state: PyTree, image: Array):
  """Train-mode student forward: (features, logits, updated batch statistics)."""
  (feats, logits), updated = student.apply(
      {"params": params["student"], "batch_stats": state["student"]}, image, train=True,
      mutable=["batch_stats"])
  return feats, logits, updated["batch_stats"]


def init_student(student: nn.Module, rng: Array, image: Array) -> tuple[PyTree, PyTree, list, Array]:
  """(params {'student'}, state {'student'}, eval-mode features, logits) of a new student."""
  variables = student.init(rng, image, train=False)
  feats, logits = student.apply(variables, image, train=False)
  return {"student": variables["params"]}, {"student": variables.get("batch_stats", {})}, feats, logits


def kd_matrix(logits: Array, teacher_logits: Array, temperature: float) -> Array:
  """Per-sample, per-teacher ``T^2 KL(p_t || p_s)``: (B, T)."""
  return losses.kd_per_sample(logits[:, None, :], teacher_logits.astype(logits.dtype), temperature)


@dataclasses.dataclass(frozen=True)
class WeightedTermsMethod:
  """Base of the methods here: subclasses define ``init`` and ``compute_terms``; the objectives
  are the weighted sums of the raw terms. Trained with the student (not bi-level) by default."""
  run: RunInfo
  weights: LossWeights
  temperature: float = 4.0

  @property
  def student(self) -> nn.Module:
    return self.run.student

  def feature_module(self) -> nn.Module | None:
    """A module of the method's own, applied to feat[feature_layer] and trained with the student
    (its parameters and statistics under 'match'); None if it has none."""
    return None

  def init(self, rng: Array, batch: dict[str, Any]) -> tuple[PyTree, PyTree, PyTree]:
    k_student, k_extra = jax.random.split(rng)
    params, state, feats, _ = init_student(self.student, k_student, batch["image"])
    module = self.feature_module()
    if module is not None:
      v = module.init(k_extra, feats[self.run.feature_layer])
      params["match"], state["match"] = v["params"], v.get("batch_stats", {})
    return params, state, {}

  def apply_feature_module(self, params: PyTree, state: PyTree, feats: Sequence[Array]) -> tuple[Any, PyTree]:
    """``feature_module`` on the student's feature map: (its output, its updated statistics)."""
    out, updated = self.feature_module().apply({"params": params["match"], "batch_stats": state["match"]},
                                               feats[self.run.feature_layer], mutable=["batch_stats"])
    return out, updated["batch_stats"]

  def compute_terms(self, params: PyTree, state: PyTree, meta_params: PyTree, batch: dict[str, Any]
                    ) -> tuple[dict[str, Array], PyTree, dict[str, Any]]:
    """(raw terms, new model_state, extras such as logits and per-sample teacher weights)."""
    raise NotImplementedError

  def objective(self, weights: LossWeights) -> Objective:
    def objective(params, state, meta_params, batch):
      terms, new_state, extras = self.compute_terms(params, state, meta_params, batch)
      terms = weights.smooth_labels(terms, extras.get("logits"))
      return weights.total(terms, batch.get("epoch", 0)), (new_state, {"terms": terms, **extras})
    return objective

  def train_objective(self, params, state, meta_params, batch):
    return self.objective(self.weights)(params, state, meta_params, batch)

  def outer_objective(self, params, state, meta_params, batch):
    raise NotImplementedError(f"{type(self).__name__} is not a bi-level method")

  def frozen(self, params, epoch):
    del params, epoch
    return None

  def with_values(self, values: Mapping[str, Array]) -> "WeightedTermsMethod":
    changes: dict[str, Any] = {}
    if "temperature" in values:
      changes["temperature"] = values["temperature"]
    for field, prefix in (("weights", "weights."), ("lookahead_weights", "meta.lookahead_weights.")):
      chosen = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
      if chosen:
        if not hasattr(self, field):
          raise TypeError(f"{type(self).__name__} has no {field} to take {sorted(chosen)} from")
        changes[field] = getattr(self, field).with_values(chosen)
      if "label_smoothing" in values and hasattr(self, field):
        changes[field] = dataclasses.replace(changes.get(field, getattr(self, field)),
                                             label_smoothing=values["label_smoothing"])
    return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A registered method: how to build it, and what it owns in the config."""
  name: str
  build: Callable[[ml_collections.ConfigDict, RunInfo], Method]
  terms: Mapping[str, float]                   # raw term -> default training weight
  section: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # config.<name>.* defaults
  presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # dataset -> field -> value
  bilevel: bool = False
  lookahead: Mapping[str, float] = dataclasses.field(default_factory=dict)  # look-ahead defaults
  feature_layer: int = -2
  temperature: float = 4.0
  feat_from_epoch: int = 0
  needs_teachers: bool = True
  validate: Callable[[ml_collections.ConfigDict], None] | None = None
  description: str = ""


METHODS: Registry[MethodSpec] = Registry(
    "method", "Register your own with @mmkd_jax.methods.register in a module listed in config.imports.")


def register(name: str, *, terms: Mapping[str, float], section: Mapping[str, Any] | None = None,
             presets: Mapping[str, Mapping[str, Any]] | None = None, bilevel: bool = False,
             lookahead: Mapping[str, float] | None = None, feature_layer: int = -2,
             temperature: float = 4.0, feat_from_epoch: int = 0, needs_teachers: bool = True,
             validate: Callable[[ml_collections.ConfigDict], None] | None = None,
             description: str = "") -> Callable:
  """Decorator on ``build(config, run) -> Method`` (a function, or a class with ``from_config``).

  ``terms``: the raw loss terms with their default weights (``config.weights.<term>``);
  ``section``: the method's own fields (``config.<name>.<field>``) with defaults; ``presets``:
  per-dataset values for any of those, ``feature_layer``, ``temperature``, ``weights.<term>`` or
  ``meta.lookahead_weights.<term>`` (``"*"`` for every dataset); ``validate(config)`` raises
  ``ConfigError`` for invalid combinations. ``bilevel=True``: trained by the bi-level strategy
  (``methods.bilevel``), which adds its hard buffer's fields to the section (``hard_buffer``,
  ``buffer_size``, checked) and a look-ahead weight 0 for ``ce`` (MMKD's) unless given.
  """
  if bilevel:
    section = {**hard_buffer.SECTION, **(section or {})}
    lookahead = {"ce": 0.0, **(lookahead or {})}

  def decorator(build):
    fn = getattr(build, "from_config", build)
    METHODS.add(name, MethodSpec(
        name, fn, dict(terms), dict(section or {}), {k: dict(v) for k, v in (presets or {}).items()},
        bilevel, dict(lookahead or {}), feature_layer, temperature, feat_from_epoch, needs_teachers,
        validate, description or (build.__doc__ or "").strip().split("\n")[0]), origin_of(build))
    return build
  return decorator


def build_method(config: ml_collections.ConfigDict, run: RunInfo) -> Method:
  """The configured method (``config`` resolved by ``mmkd_jax.config.resolve``)."""
  method = METHODS.get(config.method).build(config, run)
  if not isinstance(method, Method):
    raise TypeError(f"method {config.method!r}: build returned {type(method).__name__}, which lacks "
                    "hooks of mmkd_jax.methods.Method")
  if config.get("label_smoothing", 0.0) and not isinstance(method, WeightedTermsMethod):
    raise ConfigError(f"config.label_smoothing: method {config.method!r} ({type(method).__name__}) forms its own "
                      "objective, so the smoothing would be ignored; build it on methods.WeightedTermsMethod or "
                      "set label_smoothing=0")
  return method
