"""Several independent students in one compiled program: ``config.replicas = "0,1,2"``.

Each replica is the run of one seed of the same setting: its own parameters, optimiser state,
meta networks, hard buffer, RNG and data order (the seed's permutation) — the single run of that
seed, bit for bit in float64 (tests/test_replicas.py). The replicas' states are stacked along a
leading axis and one ``jax.vmap``-ed train / meta step advances all of them (``replica_loop=map``:
one after another, R times less temporary memory), so a results
table's seeds share one compilation and fill an accelerator that one CIFAR-size student leaves
idle (experiments/accelerator_bench.py measures the gain).

An entry may override tunable scalars (``"0:weights.feat=10"``, config.TUNABLE): their per-replica
values are an argument of the compiled step (``steps.with_values``), so a hyperparameter sweep is
one program too. ``config.replica_shards = G`` shards the replica axis over G device groups of a
('replica', 'data') mesh (docs/scaling.md).

``<workdir>/<entry>/`` (``seed<s>``, plus ``_<field>=<value>`` per override) is an ordinary run
directory of that replica (config.json with its seed and values,
metrics.jsonl, checkpoints/, best/, summary.json): ``mode=evaluate`` / ``mode=export`` and
``experiments/reproduce.py`` read it like any run, and each replica resumes from its own
checkpoints. A replica whose loss becomes NaN/inf is frozen at its last good state and stops
(its summary says so); the others go on. Evaluation runs per replica on its slice of the state.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax import checkpoint, parallel, runs, train
from mmkd_jax import steps as steps_lib
from mmkd_jax import config as config_lib
from mmkd_jax.metrics import MetricWriter, StepLog, tagged_train_metrics
from mmkd_jax.steps import TrainState

PyTree = Any


def stack(trees: Sequence[PyTree]) -> PyTree:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: PyTree, k: int) -> PyTree:
  return jax.tree.map(lambda x: x[k], tree)


def stack_carries(carries: Sequence[dict | None]) -> dict | None:
  """The replicas' metric sums carried over a mid-epoch stop, stacked like their step metrics."""
  if not carries or any(c is None for c in carries):
    return None
  def stacked(parts):
    if parts[0] is None:
      return None
    return {"sums": {k: np.stack([np.asarray(p["sums"][k]) for p in parts]) for k in parts[0]["sums"]},
            "counts": dict(parts[0]["counts"])}
  return {part: stacked([c[part] for c in carries]) for part in ("epoch", "window")}


def carry_of(carry: dict, k: int) -> dict:
  """Replica k's slice of a stacked carry (StepLog.carry)."""
  return {part: None if v is None else {"sums": {key: np.asarray(x)[k].tolist() for key, x in v["sums"].items()},
                                         "counts": v["counts"]}
          for part, v in carry.items()}


def replica_config(config: ml_collections.ConfigDict, entry: config_lib.ReplicaEntry | int) -> ml_collections.ConfigDict:
  """The single run a replica is: the config with its seed and overrides, without replicas."""
  entry = entry if isinstance(entry, config_lib.ReplicaEntry) else config_lib.ReplicaEntry(int(entry))
  c = config.copy_and_resolve_references()
  c.seed, c.replicas = entry.seed, ""
  return config_lib.set_fields(c, dict(entry.overrides))


def replica_values(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Each overridden field's value per replica (shape (R,), float32, float64 under x64): the replica's override,
  else the config's own value; {} when no replica overrides anything."""
  entries = config_lib.replica_entries(config)
  fields = sorted({field for entry in entries for field, _ in entry.overrides})
  resolved = config_lib.resolve(config)
  return {field: np.asarray([dict(entry.overrides).get(field, float(config_lib._get(resolved, field)))  # pylint: disable=protected-access
                             for entry in entries], jax.dtypes.canonicalize_dtype(np.float64))
          for field in fields}


def step_with_values(steps: Any, name: str):
  """``steps.<name>`` (train_step / meta_step) taking a replica's tunable values as a 5th
  argument (steps_lib.with_values)."""
  def step(state, raw, teacher_vars, epoch, values=None):
    return getattr(steps_lib.with_values(steps, values or {}), name)(state, raw, teacher_vars, epoch)
  return step


def loop_kind(kind: str) -> str:
  """``auto`` is ``vmap`` on every backend: with 1x1 convolutions as matmuls it beat ``map`` in
  every setting measured on the CPU too (R=3 MMKD on digits: 1.7x; experiments/RESULTS.md §6).
  ``map`` runs the replicas one after another inside the same compiled program (one
  compilation, R times less temporary memory)."""
  if kind not in config_lib.REPLICA_LOOPS:
    raise ValueError(f"replica loop {kind!r} is not one of {config_lib.REPLICA_LOOPS}")
  return "vmap" if kind == "auto" else kind


def freeze_on_nonfinite(step_fn, kind: str = "vmap", spmd_axis_name: str | None = None):
  """``step_fn`` over the replicas' leading axis (``jax.vmap``, or ``lax.map`` for ``kind="map"``);
  a replica whose step turns a tracked term non-finite keeps its previous state (with the
  non-finite record), so it stops where it was last good. ``spmd_axis_name``: the mesh axis the
  replica axis is sharded over ('replica'), so the step's own batch-sharding constraints keep it."""
  def step(state: TrainState, raw: dict[str, Any], teacher_vars: Any, epoch: jax.Array, values: dict):
    new, metrics = step_fn(state, raw, teacher_vars, epoch, values) if values else step_fn(state, raw, teacher_vars, epoch)
    bad = new.nonfinite[0] >= 0
    kept = jax.tree.map(lambda old, fresh: jnp.where(bad, old, fresh), state, new)
    return kept.replace(nonfinite=new.nonfinite), metrics

  def stepped(state: TrainState, raw: dict[str, Any], teacher_vars: Any, epoch: jax.Array, values=None):
    """``values``: per-replica tunable scalars, each of shape (R,) (replica_values), or None."""
    values = values or {}
    if loop_kind(kind) == "map":
      return jax.lax.map(lambda args: step(args[0], args[1], teacher_vars, epoch, args[2]), (state, raw, values))
    return jax.vmap(step, in_axes=(0, 0, None, None, 0), spmd_axis_name=spmd_axis_name)(
        state, raw, teacher_vars, epoch, values)
  return stepped


@dataclasses.dataclass
class ReplicaRun:
  loops: list                    # train._Loop per replica: its setup, workdir, host, checkpoints, writer
  state: TrainState              # stacked along axis 0
  train_fn: Any
  meta_fn: Any
  stopped: list                  # per replica: its non-finite message once it stopped, else None
  values: dict = dataclasses.field(default_factory=dict)  # per-replica tunable scalars (replica_values)

  @property
  def setup(self) -> train.Setup:
    return self.loops[0].setup

  def active(self) -> list[int]:
    return [k for k, message in enumerate(self.stopped) if message is None]

  def batches(self, epoch: int, first_batch: int):
    """Every replica's batch of each step (its own data order), stacked along axis 0."""
    streams = [train.train_batches(loop.setup, epoch, first_batch) for loop in self.loops]
    for raws in zip(*streams):
      yield jax.tree.map(lambda *xs: np.stack(xs), *raws)

  def run_epoch(self, epoch: int, first_batch: int, stop: runs.StopRequest) -> tuple[StepLog, int, float, bool]:
    setup, config = self.setup, self.setup.config
    spe = setup.steps_per_epoch
    epoch_array = jnp.asarray(epoch, jnp.int32)
    log = StepLog(config.log_every, first_batch, stack_carries([loop.host.pop("carry", None) for loop in self.loops]))
    tic, seen, interrupted = time.perf_counter(), 0, False
    batches = parallel.prefetch_to_device(self.batches(epoch, first_batch), setup.mesh, batch_axis=1)
    for idx, device_raw in enumerate(batches, start=first_batch):
      self.state, metrics = self.train_fn(self.state, device_raw, self.loops[0].teacher_vars, epoch_array, self.values)
      if setup.method.bilevel and epoch >= config.meta.warmup_epochs and train.is_meta_step(setup, idx):
        self.state, meta_metrics = self.meta_fn(self.state, device_raw, self.loops[0].teacher_vars, epoch_array,
                                                self.values)
        metrics = {**metrics, **meta_metrics}
      seen += config.batch_size
      self.log_windows(epoch, log.add(idx, metrics))
      global_step = epoch * spe + idx + 1
      if stop.requested or global_step == config.stop_at_step or self.loops[0].ckpt.reached_preemption(global_step):
        interrupted = True
        break
    return log, seen, tic, interrupted

  def log_windows(self, epoch: int, ready: list) -> None:
    """Writes each active replica's slice of the finished windows; a replica whose window holds a
    non-finite term is stopped first."""
    setup = self.setup
    for idx, means in ready:
      step = epoch * setup.steps_per_epoch + idx + 1
      lr = np.broadcast_to(np.asarray(self.lr(step)), (len(self.loops),))
      tracked = [means[t] for t in setup.steps.tracked if t in means]
      if not all(np.all(np.isfinite(np.asarray(v)[self.active()])) for v in tracked):
        self.check_finite()  # the finished window holds a non-finite term: stop its replica now
      for k in self.active():
        loop = self.loops[k]
        loop.writer.write(step, {**tagged_train_metrics(take(means, k), loop.teacher_names), "train/lr": float(lr[k])})

  def lr(self, step: int) -> Any:
    """The student's learning rate at ``step``: one value, or one per replica with lr overrides."""
    return steps_lib.with_values(self.setup.steps, self.values).schedule(step)

  def check_finite(self) -> None:
    """Stops (for good) each replica that recorded a non-finite term; the others go on."""
    nonfinite = np.asarray(jax.device_get(self.state.nonfinite))
    for k in self.active():
      message = self.setup.steps.nonfinite_message(nonfinite[k], self.setup.steps_per_epoch)
      if message:
        self.stopped[k] = message
        loop = self.loops[k]
        if not loop.quiet:
          print(f"{loop.label}{message} The other replicas go on.")

  def sync(self, k: int) -> None:
    """Replica k's slice of the stacked state (on every device of the mesh), for its evaluation
    and checkpoints."""
    self.loops[k].state = parallel.replicate(take(self.state, k), self.setup.mesh)


def _open(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Any], cache: Any,
          quiet: bool) -> ReplicaRun:
  entries = config_lib.replica_entries(config)
  shards = int(config.replica_shards)
  kind = loop_kind(config.replica_loop)
  if shards > 1 and jax.process_count() > 1:
    raise config_lib.ConfigError("config.replica_shards: replica groups across processes are not supported yet; "
                                 "use replica_shards=1 (replicas replicated, each batch sharded over every device)")
  mesh = parallel.data_mesh(shards)
  base = train.build(replica_config(config, config_lib.ReplicaEntry(entries[0].seed)), teachers, cache, mesh=mesh)
  steps = base.steps
  teacher_vars = parallel.replicate(tuple(t.variables for t in base.teachers), base.mesh) if steps.online else ()
  eval_fn = jax.jit(steps.eval_step)
  loops, states = [], []
  for k, entry in enumerate(entries):
    setup = dataclasses.replace(base, config=config_lib.resolve(replica_config(config, entry)))
    directory = os.path.join(workdir, entry.name)
    os.makedirs(directory, exist_ok=True)
    state, host, ckpt = train.restore_or_init(setup, directory, quiet)
    train.write_config(setup.config, directory)
    loop = train._Loop(setup, directory, quiet, state, host, ckpt,  # pylint: disable=protected-access
                       MetricWriter(directory, train.resume_step(state)), teacher_vars, None, None, eval_fn,
                       label=f"replica {k} ({entry.name}): ")
    accuracy = loops[0].host["teacher_accuracy"] if loops else None
    train.record_teacher_accuracy(loop, accuracy)
    loops.append(loop)
    states.append(state)
  state = parallel.shard_replicas(stack(states), mesh)
  stopped = [steps.nonfinite_message(np.asarray(s.nonfinite), base.steps_per_epoch) for s in states]
  axis = "replica" if shards > 1 else None
  values = parallel.shard_replicas(replica_values(config), mesh)
  train_fn, meta_fn = (jax.jit(freeze_on_nonfinite(step_with_values(steps, name), kind, axis), donate_argnums=(0,))
                       for name in ("train_step", "meta_step"))
  return ReplicaRun(loops, state, train_fn, meta_fn, stopped, values)


def train_replicas(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Any] = (),
                   cache: Any = None, quiet: bool = False) -> dict[str, Any]:
  """Trains the replicas of ``config.replicas`` together (resuming each from its directory);
  returns {"replicas": [each replica's summary], "seeds": [...]} and writes the summaries."""
  os.makedirs(workdir, exist_ok=True)
  quiet = quiet or jax.process_index() != 0
  with checkpoint.WorkdirLock(workdir):
    run = _open(config, workdir, teachers, cache, quiet)
    setup, spe = run.setup, run.setup.steps_per_epoch
    start_step = max(int(jax.device_get(loop.state.step)) for k, loop in enumerate(run.loops)
                     if run.stopped[k] is None) if run.active() else setup.config.epochs * spe
    preempted, started = False, time.time()
    with runs.StopRequest() as stop:
      for epoch in range(start_step // spe, setup.config.epochs):
        if not run.active():
          break
        first_batch = start_step % spe if epoch == start_step // spe else 0
        log, seen, tic, interrupted = run.run_epoch(epoch, first_batch, stop)
        run.check_finite()
        run.log_windows(epoch, log.flush())
        if interrupted:
          step_now = int(np.max(jax.device_get(run.state.step)))
          carry = log.carry(step_now - epoch * spe - 1)
        for k in run.active():
          run.sync(k)
          loop = run.loops[k]
          if interrupted:
            loop.host["carry"] = carry_of(carry, k)
            loop.host["train_seconds"] = loop.host.get("train_seconds", 0.0) + time.perf_counter() - tic
            loop.ckpt.save(int(jax.device_get(loop.state.step)), loop.state, loop.host, force=True)
            loop.host.pop("carry")
          else:
            loop.end_epoch(epoch, log.replica(k), seen, tic)
        if interrupted:
          preempted = True
          for loop in run.loops:
            loop.ckpt.wait()
          break
    summaries = []
    for k, loop in enumerate(run.loops):
      loop.close()
      status = "nonfinite" if run.stopped[k] else "preempted" if preempted else "finished"
      summary = train.run_summary(loop.setup, loop.host, status, started)
      summary["replica"] = {"index": k, "of": len(run.loops), "workdir": workdir}
      if run.stopped[k]:
        summary["stopped"] = run.stopped[k]
      if not preempted:
        train.write_summary(summary, loop.workdir)
      summaries.append(summary)
  if not preempted and not run.active():
    messages = "; ".join(f"replica {k}: {m}" for k, m in enumerate(run.stopped))
    raise train.NonFiniteLossError(f"every replica stopped on a non-finite loss ({messages})")
  return {"seeds": list(config_lib.replica_seeds(config)), "replicas": summaries, "state": run.state}


__all__ = ["ReplicaRun", "freeze_on_nonfinite", "loop_kind", "stack", "take", "train_replicas"]
