"""Several independent students in one compiled program: ``config.replicas = "0,1,2"``.

Each replica is the run of one seed of the same setting: its own parameters, optimiser state,
meta networks, hard buffer, RNG and data order (the seed's permutation) — the single run of that
seed, bit for bit in float64 (tests/test_replicas.py). The replicas' states are stacked along a
leading axis and one ``jax.vmap``-ed train / meta step advances all of them (``replica_loop=map``:
one after another, R times less temporary memory), so a results
table's seeds share one compilation and fill an accelerator that one CIFAR-size student leaves
idle (experiments/accelerator_bench.py measures the gain).

An entry may override tunable scalars (``"0:weights.feat=10"``, replica_spec.TUNABLE): their per-replica
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
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax import dispatch, parallel, runs, storage, train, workdir_lock
from mmkd_jax import config as config_lib
from mmkd_jax import replica_spec
from mmkd_jax import loop as loop_lib
from mmkd_jax import steps as steps_lib
from mmkd_jax.loop import Member, NonFiniteLossError, Program
from mmkd_jax.steps import TrainState

PyTree = Any


def stack(trees: Sequence[PyTree]) -> PyTree:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: PyTree, k: int) -> PyTree:
  return jax.tree.map(lambda x: x[k], tree)


def replica_config(config: ml_collections.ConfigDict, entry: replica_spec.ReplicaEntry | int) -> ml_collections.ConfigDict:
  """The single run a replica is: the config with its seed and overrides, without replicas."""
  entry = entry if isinstance(entry, replica_spec.ReplicaEntry) else replica_spec.ReplicaEntry(int(entry))
  c = config.copy_and_resolve_references()
  c.seed, c.replicas = entry.seed, ""
  return config_lib.set_fields(c, dict(entry.overrides))


def replica_values(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Each overridden field's value per replica (shape (R,), float32, float64 under x64): the replica's override,
  else the config's own value; {} when no replica overrides anything."""
  entries = replica_spec.replica_entries(config)
  fields = sorted({field for entry in entries for field, _ in entry.overrides})
  resolved = config_lib.resolve(config)
  return {field: np.asarray([dict(entry.overrides).get(field, float(replica_spec.get_field(resolved, field)))
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
  if kind not in replica_spec.REPLICA_LOOPS:
    raise ValueError(f"replica loop {kind!r} is not one of {replica_spec.REPLICA_LOOPS}")
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


def _open(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Any], cache: Any,
          quiet: bool) -> tuple[Program, list[Member]]:
  entries = replica_spec.replica_entries(config)
  shards = int(config.replica_shards)
  kind = loop_kind(config.replica_loop)
  if shards > 1 and jax.process_count() > 1:
    raise config_lib.ConfigError("config.replica_shards: replica groups across processes are not supported yet; "
                                 "use replica_shards=1 (replicas replicated, each batch sharded over every device)")
  mesh = parallel.data_mesh(shards)
  base = train.build(replica_config(config, replica_spec.ReplicaEntry(entries[0].seed)), teachers, cache, mesh=mesh)
  steps = base.steps
  teacher_vars = parallel.copy_to_devices(tuple(t.variables for t in base.teachers), base.mesh) if steps.online else ()
  eval_fn = train.eval_function(base, quiet)
  members = []
  for k, entry in enumerate(entries):
    setup = dataclasses.replace(base, config=config_lib.resolve(replica_config(config, entry)))
    directory = storage.join(workdir, entry.name)
    storage.makedirs(directory)
    member = train.open_member(setup, directory, quiet, eval_fn, label=f"replica {k} ({entry.name}): ")
    train.write_config(setup.config, directory)
    train.record_teacher_accuracy(member, members[0].host["teacher_accuracy"] if members else None)
    member.stopped = steps.nonfinite_message(np.asarray(member.state.nonfinite), base.steps_per_epoch)
    member.stop_status = "nonfinite" if member.stopped else ""
    members.append(member)
  axis = "replica" if shards > 1 else None
  values = parallel.shard_replicas(replica_values(config), mesh)
  train_step, meta_step = (freeze_on_nonfinite(step_with_values(steps, name), kind, axis)
                           for name in ("train_step", "meta_step"))
  train_fn, meta_fn = (loop_lib.announced(jax.jit(fn, donate_argnums=(0,)), f"the {what} of {len(members)} replicas", quiet)
                       for fn, what in ((train_step, "training step"), (meta_step, "meta step")))

  def host_batches(epoch: int, first_batch: int):
    """Every replica's batch of each step (its own data order), stacked along axis 0."""
    streams = [train.train_batches(m.setup, epoch, first_batch) for m in members]
    for raws in zip(*streams):
      yield jax.tree.map(lambda *xs: np.stack(xs), *raws)

  state = parallel.shard_replicas(stack([m.state for m in members]), mesh)
  program = Program(state, train_fn, meta_fn, teacher_vars, host_batches, stacked=True, values=values,
                    lr_fn=lambda step: steps_lib.with_values(steps, values).schedule(step))
  program.scanned = dispatch.open_scanned(base, program, [m.setup.config.seed for m in members], train_step, meta_step,
                                          lambda epoch: train.replay_of(base, epoch), quiet)
  for member in members if program.scanned is not None else ():
    member.eval_batches = program.scanned.data.eval_batches
  return program, members


def train_replicas(config: ml_collections.ConfigDict, workdir: str, teachers: Sequence[Any] = (),
                   cache: Any = None, quiet: bool = False) -> dict[str, Any]:
  """Trains the replicas of ``config.replicas`` together (resuming each from its directory);
  returns {"replicas": [each replica's summary], "seeds": [...]} and writes the summaries."""
  storage.makedirs(workdir)
  quiet = quiet or jax.process_index() != 0
  with workdir_lock.WorkdirLock(workdir):
    program, members = _open(config, workdir, teachers, cache, quiet)
    mesh = members[0].setup.mesh
    started = time.time()
    with runs.StopRequest() as stop:
      preempted = loop_lib.run(program, members, stop, lambda k: parallel.copy_to_devices(take(program.state, k), mesh))
    program.close()
    summaries = []
    for k, member in enumerate(members):
      member.close()
      status = member.stop_status or ("preempted" if preempted else "finished")
      summary = train.run_summary(member.setup, member.host, status, started)
      summary.update(train.this_command(member, program))
      summary["replica"] = {"index": k, "of": len(members), "workdir": workdir}
      if member.stopped:
        summary["stopped"] = member.stopped
      if not preempted:
        train.write_summary(summary, member.workdir)
      summaries.append(summary)
  if not preempted and all(m.stopped for m in members):
    messages = "; ".join(f"replica {k}: {m.stopped}" for k, m in enumerate(members))
    raise NonFiniteLossError(f"every replica stopped on a non-finite or diverging loss ({messages})")
  return {"seeds": list(replica_spec.replica_seeds(config)), "replicas": summaries, "state": program.state}


__all__ = ["freeze_on_nonfinite", "loop_kind", "stack", "take", "train_replicas"]
