"""The trainer: TrainState, pure jitted steps, and the epoch loop.

Read top to bottom: config -> data -> method -> state -> train_step / meta_step / eval_step
-> loop with evaluation, checkpoints and metrics. Everything that differs between methods
lives behind the interface of ``mmkd_jax.distill.methods``; this file has no method ladder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from mmkd_jax import bilevel, checkpoint, optim, parallel
from mmkd_jax.data import pipeline, sources
from mmkd_jax.data.augment import augment, normalize
from mmkd_jax.distill import hard_buffer, losses
from mmkd_jax.distill.methods import TeacherInfo, get_method
from mmkd_jax.models import get_model
from mmkd_jax.teachers import Teacher, teacher_forward

PyTree = Any


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32, global step; epoch and batch position derive from it
  params: PyTree             # inner parameters: {'student', 'match'?}
  model_state: PyTree        # BatchNorm running statistics, same keys
  opt_state: PyTree
  meta_params: PyTree        # learned weighting parameters ({} when none)
  meta_opt_state: PyTree
  buffer: Any                # HardBuffer, or {} without one
  rng: jax.Array             # uint32 key data
  nonfinite: jax.Array       # int32 (2,): first step with a non-finite term and that term's index


# ---------------------------------------------------------------------------------------
# Pure step functions.


@dataclasses.dataclass(frozen=True)
class Steps:
  """Closes over everything static and exposes the jitted steps."""
  config: ml_collections.ConfigDict
  method: Any
  optimizer: optax.GradientTransformation
  meta_optimizer: optax.GradientTransformation
  spec: sources.DatasetSpec
  teachers: Sequence[Teacher]
  online: bool
  # Sharding of batch-major arrays (the mesh's 'data' axis); None on a single device.
  data_sharding: Any = None

  def device_batch(self, raw: dict[str, Any], teacher_vars: Sequence[PyTree]) -> dict[str, Any]:
    """Augments (from seed, index, replay) and normalises on device; adds teacher outputs."""
    x = normalize(augment(raw["image"], raw["index"], raw["replay"], self.config.augmentation_seed),
                  self.spec.mean, self.spec.std)
    batch = {"image": x, "label": raw["label"]}
    if self.method.needs_teachers:
      if self.online:
        logits, feats = teacher_forward(self.teachers, teacher_vars, x, self.config.feature_layer)
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
    (loss, (model_state, terms)), grads = grad_fn(state.params, state.model_state, state.meta_params, batch)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rng, buffer_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    buffer = state.buffer
    logits = terms["logits"]
    if isinstance(buffer, hard_buffer.HardBuffer):
      stored = {k: v for k, v in batch.items() if k != "epoch"}
      misclassified = jnp.argmax(logits, -1) != batch["label"]
      buffer = hard_buffer.update(buffer, stored, misclassified, buffer_key)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
    metrics.update({k: v for k, v in terms.items() if k.startswith("loss_")})
    for key in ("logits_weights", "feature_weights"):
      if key in terms and terms[key] is not None:
        metrics[f"mean_{key}"] = jnp.mean(terms[key], axis=0)
    if terms.get("logits_weights") is not None:
      # Per-class sums and counts; their ratio over an epoch is each class's mean teacher weight.
      onehot = jax.nn.one_hot(batch["label"], self.spec.num_classes, dtype=jnp.float32)
      metrics["class_weight_sums"] = onehot.T @ terms["logits_weights"].astype(jnp.float32)
      metrics["class_counts"] = jnp.sum(onehot, axis=0)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state, buffer=buffer,
                              rng=jax.random.key_data(rng),
                              nonfinite=_track_nonfinite(state, metrics))
    return new_state, metrics

  def meta_step(self, state: TrainState, raw: dict[str, Any], teacher_vars: Sequence[PyTree],
                epoch: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    meta = self.config.meta
    rng, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    if isinstance(state.buffer, hard_buffer.HardBuffer):
      batch = hard_buffer.sample(state.buffer, sample_key, self.config.batch_size)
      if self.data_sharding is not None:
        # The buffer is replicated, so a gather from it is too: without this constraint every
        # device would compute the whole meta step (measured: 7.8x slower on 8 devices).
        batch = jax.lax.with_sharding_constraint(batch, self.data_sharding)
    else:
      batch = self.device_batch(raw, teacher_vars)
    batch = dict(batch, epoch=epoch)
    objectives = self.method.lookahead_objectives(meta.lookahead_matching_steps, meta.lookahead_outer_steps)
    final, grads, result = bilevel.hypergradient(
        self.optimizer, objectives, self.method.outer_objective, state.params, state.opt_state,
        state.model_state, state.meta_params, batch, first_order=meta.first_order,
        mode=meta.hypergradient)
    updates, meta_opt_state = self.meta_optimizer.update(grads, state.meta_opt_state, state.meta_params)
    new = state.replace(meta_params=optax.apply_updates(state.meta_params, updates),
                        meta_opt_state=meta_opt_state, rng=jax.random.key_data(rng))
    if not meta.rollback:
      new = new.replace(params=result.params, opt_state=result.opt_state, model_state=result.model_state)
    metrics = {"meta_outer_loss": final, "hypergrad_norm": optax.tree.norm(grads)}
    return new.replace(nonfinite=_track_nonfinite(new, metrics, offset=len(_TRACKED))), metrics

  def eval_step(self, state: TrainState, raw: dict[str, Any]) -> dict[str, jax.Array]:
    x = normalize(raw["image"], self.spec.mean, self.spec.std)
    _, logits = self.method.student.apply(
        {"params": state.params["student"], "batch_stats": state.model_state["student"]}, x, train=False)
    return _eval_sums(logits, raw["label"], raw["mask"])


def _eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  per_sample_loss = losses.per_sample_cross_entropy(logits, labels)
  return {"top1": jnp.sum(losses.top_k_correct(logits, labels, 1) * mask),
          "top5": jnp.sum(losses.top_k_correct(logits, labels, 5) * mask),
          "loss": jnp.sum(per_sample_loss * mask), "count": jnp.sum(mask)}


# The terms watched by the NaN guard, in order (index stored in TrainState.nonfinite).
_TRACKED = ("loss_cls", "loss_div", "loss_feat", "loss")
_TRACKED_META = ("meta_outer_loss", "hypergrad_norm")


def _track_nonfinite(state: TrainState, metrics: dict[str, jax.Array], offset: int = 0) -> jax.Array:
  names = _TRACKED if offset == 0 else _TRACKED_META
  values = [jnp.all(jnp.isfinite(metrics[n])) if n in metrics else jnp.array(True) for n in names]
  finite = jnp.stack(values)
  first_bad = jnp.argmin(finite) + offset
  is_new = jnp.logical_and(state.nonfinite[0] < 0, ~jnp.all(finite))
  return jnp.where(is_new, jnp.stack([state.step, first_bad]).astype(jnp.int32), state.nonfinite)


def nonfinite_message(nonfinite: np.ndarray, steps_per_epoch: int) -> str | None:
  step, term = int(nonfinite[0]), int(nonfinite[1])
  if step < 0:
    return None
  names = _TRACKED + _TRACKED_META
  return (f"loss term {names[term]!r} became NaN/inf at step {step} (epoch {step // steps_per_epoch + 1},"
          f" batch {step % steps_per_epoch}); training stopped and the last good checkpoint is kept. "
          "Lower the learning rate or the loss weights (kd.beta), or check the teacher outputs.")


# ---------------------------------------------------------------------------------------
# Construction.


@dataclasses.dataclass
class Setup:
  config: ml_collections.ConfigDict
  spec: sources.DatasetSpec
  train_source: Any
  test_source: Any
  steps_per_epoch: int
  method: Any
  teachers: list[Teacher]
  cache: Any
  steps: Steps
  mesh: Any


def dataset_spec(config: ml_collections.ConfigDict) -> sources.DatasetSpec:
  """The configured dataset with the configured train/eval splits."""
  return sources.get_spec(config.dataset, config.train_split, config.eval_split)


def student_lr(config: ml_collections.ConfigDict) -> float:
  return float(config.lr)


def build(config: ml_collections.ConfigDict, teachers: Sequence[Teacher], cache: Any,
          student_arch: str | None = None) -> Setup:
  spec = dataset_spec(config)
  data_dir = config.data_dir or None
  train_source = sources.data_source(config.dataset, spec.train_split, data_dir)
  test_source = sources.data_source(config.dataset, spec.test_split, data_dir)
  spe = pipeline.steps_per_epoch(len(train_source), config.batch_size)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  arch = student_arch or config.student
  bn_groups = 1 if config.sync_batch_norm else mesh.devices.size
  student = get_model(arch, spec.num_classes, bn_groups)
  info = None
  if teachers:
    from mmkd_jax.teachers import feature_shapes  # pylint: disable=import-outside-toplevel
    shapes = feature_shapes(teachers, spec.image_size, config.feature_layer)
    info = TeacherInfo.of(teachers, shapes)
  method = get_method(config, student, config.feature_layer, info, bn_groups)
  if method.needs_teachers and not teachers:
    raise ValueError(f"method {config.method!r} needs teachers; config.teachers is empty")
  schedule = optim.multistep_lr(student_lr(config), spe, config.lr_milestones, config.lr_decay)
  optimizer = optim.torch_sgd(schedule, config.momentum, config.nesterov, config.weight_decay)
  meta_optimizer = optim.torch_adam(config.meta.lr, config.meta.weight_decay)
  online = config.teacher_source == "online"
  steps = Steps(config, method, optimizer, meta_optimizer, spec, tuple(teachers), online,
                parallel.batch_sharding(mesh) if mesh.devices.size > 1 else None)
  return Setup(config, spec, train_source, test_source, spe, method, list(teachers), cache, steps, mesh)


def _host_batch(setup: Setup, indices: np.ndarray, epoch: int) -> dict[str, Any]:
  """Extra per-example arrays joined to image batches: the replay and the cached teacher outputs."""
  if setup.cache is not None and setup.method.needs_teachers and not setup.steps.online:
    return setup.cache.lookup(indices, epoch)
  return {"replay": np.full(len(indices), epoch, np.int32)}


def example_batch(setup: Setup) -> dict[str, Any]:
  """This process's first training batch (with its joined arrays), for shapes at initialisation."""
  return next(iter(pipeline.train_batches(
      setup.train_source, setup.spec, setup.config.batch_size, setup.config.seed, 0,
      process_index=jax.process_index(), process_count=jax.process_count(),
      join=lambda i, e: _host_batch(setup, i, e))))


def init_state(setup: Setup, example_raw: dict[str, Any]) -> TrainState:
  """The initial state on this host, from a process-local example batch.

  Parameter shapes depend on the *global* batch (MMKD's feature weighter reads B x B Gram
  matrices), so the local rows are tiled to the global batch size; only shapes matter here.
  Every process computes the identical state from the same seed.
  """
  config, steps = setup.config, setup.steps
  local = jax.tree.leaves(example_raw)[0].shape[0]
  if local != config.batch_size:
    example_raw = jax.tree.map(lambda x: np.concatenate([np.asarray(x)] * (config.batch_size // local)),
                               example_raw)
  rng = jax.random.key(config.seed)
  init_key, state_key = jax.random.split(rng)
  teacher_vars = tuple(t.variables for t in setup.teachers) if steps.online else ()
  batch = steps.device_batch(jax.tree.map(jnp.asarray, example_raw), teacher_vars)
  params, model_state, meta_params = setup.method.init(init_key, batch)
  buffer = {}
  if setup.method.bilevel and config.meta.hard_buffer:
    buffer = hard_buffer.init(batch, config.meta.buffer_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=steps.optimizer.init(params), meta_params=meta_params,
                    meta_opt_state=steps.meta_optimizer.init(meta_params), buffer=buffer,
                    rng=jax.random.key_data(state_key), nonfinite=jnp.full((2,), -1, jnp.int32))


# ---------------------------------------------------------------------------------------
# Metrics.


class MetricWriter:
  """JSON lines (``metrics.jsonl``) and TensorBoard event files, from process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # optional
      self.tb = None

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    """Scalars and vectors (as ``key/i``) go to both logs; matrices only to the JSONL log."""
    if not self.enabled:
      return
    flat, nested = {}, {}
    for k, v in scalars.items():
      v = np.asarray(v)
      if v.ndim == 0:
        flat[k] = float(v) if v.dtype.kind == "f" else int(v)
      elif v.ndim == 1:
        for i, x in enumerate(v):
          flat[f"{k}/{i}"] = float(x)
      else:
        v = np.round(v.astype(np.float64), 6)
        nested[k] = np.where(np.isfinite(v), v, None).tolist()  # JSON has no NaN
    self.jsonl.write(json.dumps({"step": step, **flat, **nested}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in flat.items():
        if isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      if self.tb is not None:
        self.tb.close()


def _mean_metrics(pending: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  fetched = jax.device_get(pending)
  keys = set().union(*[m.keys() for m in fetched]) if fetched else set()
  return {k: np.mean([np.asarray(m[k]) for m in fetched if k in m], axis=0) for k in sorted(keys)}


# ---------------------------------------------------------------------------------------
# Evaluation.


def eval_batch_size(setup: Setup) -> int:
  """The configured eval batch rounded up to a multiple of the devices (padding is masked)."""
  devices = setup.mesh.devices.size
  return -(-setup.config.eval_batch_size // devices) * devices


def evaluate(setup: Setup, state: TrainState, eval_fn: Callable) -> dict[str, float]:
  totals: dict[str, float] = {}
  for raw in pipeline.eval_batches(setup.test_source, setup.spec, eval_batch_size(setup),
                                   jax.process_index(), jax.process_count()):
    sums = jax.device_get(eval_fn(state, parallel.shard_batch(raw, setup.mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = max(totals.get("count", 0.0), 1.0)
  return {"top1": 100.0 * totals["top1"] / count, "top5": 100.0 * totals["top5"] / count,
          "loss": totals["loss"] / count}


def evaluate_teachers(setup: Setup) -> dict[str, float]:
  """Top-1 of each teacher and of the ensemble (mean logits) on the test split."""
  if not setup.teachers:
    return {}
  spec = setup.spec

  @jax.jit
  def step(teacher_vars, raw):
    x = normalize(raw["image"], spec.mean, spec.std)
    logits, _ = teacher_forward(setup.teachers, teacher_vars, x, setup.config.feature_layer)
    out = {f"teacher/{t.name}": jnp.sum(losses.top_k_correct(logits[:, i], raw["label"], 1) * raw["mask"])
           for i, t in enumerate(setup.teachers)}
    out["teacher/ensemble"] = jnp.sum(
        losses.top_k_correct(jnp.mean(logits, 1), raw["label"], 1) * raw["mask"])
    out["count"] = jnp.sum(raw["mask"])
    return out

  teacher_vars = tuple(t.variables for t in setup.teachers)
  totals: dict[str, float] = {}
  for raw in pipeline.eval_batches(setup.test_source, spec, eval_batch_size(setup),
                                   jax.process_index(), jax.process_count()):
    for k, v in jax.device_get(step(teacher_vars, parallel.shard_batch(raw, setup.mesh))).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = totals.pop("count")
  return {k: 100.0 * v / count for k, v in totals.items()}


# ---------------------------------------------------------------------------------------
# The loop.


class _StopRequest:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Teacher] = (),
                       cache: Any = None, student_arch: str | None = None,
                       quiet: bool = False) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds checkpoints) and returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  quiet = quiet or jax.process_index() != 0  # logging and progress from process 0 only
  setup = build(config, teachers, cache, student_arch)
  spe, steps, mesh = setup.steps_per_epoch, setup.steps, setup.mesh
  pi, pc = jax.process_index(), jax.process_count()

  state = init_state(setup, example_batch(setup))
  ckpt = checkpoint.Checkpoints(workdir, config.keep_checkpoints, async_save=config.async_checkpoints)
  host = {"best_top1": -1.0, "best_epoch": 0, "history": [], "teacher_accuracy": {}}
  restored = ckpt.restore(state)
  if restored is not None:
    state, host, restored_step = restored
    if not quiet:
      print(f"resumed from checkpoint step {restored_step} in {workdir}")
  state = parallel.replicate(state, mesh)
  teacher_vars = parallel.replicate(tuple(t.variables for t in setup.teachers), mesh) if steps.online else ()

  train_fn = jax.jit(steps.train_step, donate_argnums=(0,))
  meta_fn = jax.jit(steps.meta_step, donate_argnums=(0,))
  eval_fn = jax.jit(steps.eval_step)
  writer = MetricWriter(workdir)
  if not host["teacher_accuracy"] and setup.teachers:
    host["teacher_accuracy"] = evaluate_teachers(setup)
    if not quiet:
      print("teachers (test top-1): " + ", ".join(f"{k.split('/')[1]} {v:.2f}%"
                                                  for k, v in host["teacher_accuracy"].items()))
    writer.write(0, host["teacher_accuracy"])

  start_step = int(jax.device_get(state.step))
  epochs = config.epochs
  status = "finished"
  started = time.time()
  with _StopRequest() as stop:
    for epoch in range(start_step // spe, epochs):
      first_batch = start_step % spe if epoch == start_step // spe else 0
      epoch_array = jnp.asarray(epoch, jnp.int32)
      bar = tqdm(total=spe, initial=first_batch, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                 disable=quiet or pi != 0, unit="step")
      pending, tic, seen = [], time.perf_counter(), 0
      batches = pipeline.train_batches(setup.train_source, setup.spec, config.batch_size, config.seed,
                                       epoch, first_batch, pi, pc,
                                       join=lambda i, e: _host_batch(setup, i, e))
      for idx, raw in enumerate(batches, start=first_batch):
        device_raw = parallel.shard_batch(raw, mesh)
        state, metrics = train_fn(state, device_raw, teacher_vars, epoch_array)
        if (setup.method.bilevel and epoch >= config.meta.warmup_epochs
            and (idx % config.meta.freq == 0 or idx == spe - 1)):
          state, meta_metrics = meta_fn(state, device_raw, teacher_vars, epoch_array)
          metrics = {**metrics, **meta_metrics}
        pending.append(metrics)
        seen += config.batch_size
        bar.update(1)
        if (idx + 1) % config.log_every == 0 and len(pending) > config.log_every:
          # The window before the last one: those steps are done, so reading them does not
          # drain the device queue (no host round-trip stalls the epoch).
          means = _mean_metrics(pending[-2 * config.log_every:-config.log_every])
          bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{100 * means['accuracy']:.1f}",
                          img_s=f"{seen / (time.perf_counter() - tic):.0f}")
        global_step = epoch * spe + idx + 1
        if stop.requested or global_step == config.stop_at_step:
          status = "preempted"
          break
      bar.close()
      train_means = _mean_metrics(pending)
      class_weights = None
      if "class_weight_sums" in train_means:
        counts = train_means.pop("class_counts")[:, None]
        sums = train_means.pop("class_weight_sums")
        class_weights = np.where(counts > 0, sums / np.maximum(counts, 1e-12), np.nan)
      message = nonfinite_message(np.asarray(jax.device_get(state.nonfinite)), spe)
      if message:
        ckpt.close()
        writer.close()
        raise NonFiniteLossError(message)
      step_now = int(jax.device_get(state.step))
      if status == "preempted":
        ckpt.save(step_now, state, host, force=True)
        ckpt.wait()
        if not quiet:
          print(f"stopped at step {step_now}; checkpoint saved in {workdir}")
        break
      result = evaluate(setup, state, eval_fn)
      epoch_seconds = time.perf_counter() - tic
      is_best = result["top1"] > host["best_top1"]
      if is_best:
        host["best_top1"], host["best_epoch"] = result["top1"], epoch + 1
      record = {"epoch": epoch + 1, "test_top1": result["top1"], "test_top5": result["top5"],
                "test_loss": result["loss"], "train_images_per_s": seen / epoch_seconds,
                **{f"train_{k}": v.tolist() if np.ndim(v) else float(v) for k, v in train_means.items()}}
      host["history"].append(record)
      logged = ({k: v for k, v in record.items() if not isinstance(v, list)}
                | {k: np.asarray(v) for k, v in record.items() if isinstance(v, list)})
      if class_weights is not None:  # (classes, teachers): logged, not kept in the checkpoint
        logged["train_class_logits_weights"] = class_weights
      writer.write(step_now, logged)
      if not quiet and pi == 0:
        weights = record.get("train_mean_logits_weights")
        extra = f", teacher weights {np.round(weights, 3).tolist()}" if weights is not None else ""
        print(f"epoch {epoch + 1:3d}/{epochs}: loss {record.get('train_loss', float('nan')):.4f}, "
              f"train acc {100 * record.get('train_accuracy', 0):.2f}%, test top-1 {result['top1']:.2f}% "
              f"(best {host['best_top1']:.2f}% @ {host['best_epoch']}), {record['train_images_per_s']:.0f} img/s{extra}")
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == epochs or is_best:
        ckpt.save(step_now, state, host, is_best=is_best)
  ckpt.close()
  writer.close()
  summary = {
      "status": status,
      "method": config.method, "student": student_arch or config.student, "dataset": config.dataset,
      "seed": config.seed, "epochs_completed": len(host["history"]),
      "final_top1": host["history"][-1]["test_top1"] if host["history"] else None,
      "final_top5": host["history"][-1]["test_top5"] if host["history"] else None,
      "best_top1": host["best_top1"], "best_epoch": host["best_epoch"],
      "teacher_accuracy": host["teacher_accuracy"],
      "teachers": [{"name": t.name, "arch": t.arch, "fingerprint": t.fingerprint} for t in setup.teachers],
      "wall_seconds": time.time() - started,
  }
  if status == "finished" and pi == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  summary["state"] = state
  return summary

