"""How a program's members sit in its state and are stepped: one run (``OneRun``: its own state, the
plain compiled steps) or R replicas (``Stacked``: ``config.replicas = "0,1,2"``).

Each replica is the run of one seed of the same setting: its own parameters, optimiser state,
meta networks, hard buffer, RNG and data order (the seed's permutation) — the single run of that
seed, bit for bit in float64 (tests/training/test_replicas.py). The replicas' states are stacked along a
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

from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.config import replicas as replica_spec
from mmkd_jax.config.fields import get_field
from mmkd_jax.runs import progress
from mmkd_jax.training import parallel
from mmkd_jax.training import steps as steps_lib
from mmkd_jax.training.steps import TrainState

PyTree = Any


def stack(trees: Sequence[PyTree]) -> PyTree:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: PyTree, k: int) -> PyTree:
  return jax.tree.map(lambda x: x[k], tree)


def replica_values(config: ml_collections.ConfigDict, member_configs: Sequence[ml_collections.ConfigDict]
                   ) -> dict[str, np.ndarray]:
  """Each field some replica overrides, with every replica's value (shape (R,), float32, float64
  under x64) read from its resolved config; {} when no replica overrides anything."""
  fields = sorted({field for entry in replica_spec.replica_entries(config) for field, _ in entry.overrides})
  return {field: np.asarray([float(get_field(c, field)) for c in member_configs], jax.dtypes.canonicalize_dtype(np.float64))
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


class OneRun:
  """One run: the program's state is the run's own and its steps are the plain compiled ones (a
  member axis of size 1 would change XLA's fusion and the numbers: measured 1e-5 after 4 MMKD
  steps), so a single run is bit for bit the run it always was."""

  size = 1
  stacked = False   # states, batches and an epoch's rows carry no member axis
  batch_axis = 0

  def batch_sharding(self, mesh: Any) -> Any:
    """How a dispatch's gathered batches are sharded: over 'data' with several devices, else as
    they come."""
    return parallel.batch_sharding(mesh, 0) if parallel.data_devices(mesh) > 1 else None

  def compile(self, steps: Any, quiet: bool, values: dict) -> tuple[Callable, Callable]:
    del values
    return (progress.announced(jax.jit(steps.train_step, donate_argnums=(0,)), "the training step", quiet),
            progress.announced(jax.jit(steps.meta_step, donate_argnums=(0,)), "the meta step", quiet))

  def raw_steps(self, steps: Any) -> tuple[Callable, Callable]:
    """The uncompiled steps of a dispatch (``dispatch.chunk_function`` composes them)."""
    return steps.train_step, steps.meta_step

  def place(self, states: Sequence[PyTree], mesh: Any) -> PyTree:
    return parallel.copy_to_devices(states[0], mesh)

  def place_values(self, values: dict, mesh: Any) -> dict:
    del mesh
    return values

  def step_args(self, values: dict) -> tuple:
    del values
    return ()

  def member_of(self, tree: PyTree, k: int) -> PyTree:
    del k
    return tree

  def member_state(self, state: PyTree, k: int, mesh: Any) -> PyTree:
    del k, mesh
    return state

  def host_batches(self, streams: Sequence[Iterator]) -> Iterator:
    return streams[0]

  def rows_shape(self, steps: int, batch: int) -> tuple[int, ...]:
    """The shape of an epoch's record positions (``data.resident``)."""
    return (steps, batch)

  def rows_at(self, rows: jax.Array, step: Any) -> jax.Array:
    return rows[step]

  def carry(self, carries: Sequence[dict | None]) -> dict | None:
    return carries[0]

  def member_carry(self, carry: dict, k: int) -> dict:
    del k
    return carry


class Stacked:
  """R replicas: their states stacked along a leading axis, advanced by one ``jax.vmap``-ed (or
  ``lax.map``-ped) step that freezes a replica whose step turned non-finite; each replica's
  tunable values are an argument of the step."""

  stacked = True    # states, batches (replica, batch, ...) and an epoch's rows have a member axis
  batch_axis = 1

  def batch_sharding(self, mesh: Any) -> Any:
    return parallel.batch_sharding(mesh, 1)

  def __init__(self, size: int, kind: str, spmd_axis_name: str | None):
    self.size, self.kind, self.spmd_axis_name = size, loop_kind(kind), spmd_axis_name

  def raw_steps(self, steps: Any) -> tuple[Callable, Callable]:
    return tuple(freeze_on_nonfinite(step_with_values(steps, name), self.kind, self.spmd_axis_name)
                 for name in ("train_step", "meta_step"))

  def compile(self, steps: Any, quiet: bool, values: dict) -> tuple[Callable, Callable]:
    del values
    train_step, meta_step = self.raw_steps(steps)
    return tuple(progress.announced(jax.jit(fn, donate_argnums=(0,)), f"the {what} of {self.size} replicas", quiet)
                 for fn, what in ((train_step, "training step"), (meta_step, "meta step")))

  def place(self, states: Sequence[PyTree], mesh: Any) -> PyTree:
    return parallel.shard_replicas(stack(states), mesh)

  def place_values(self, values: dict, mesh: Any) -> dict:
    return parallel.shard_replicas(values, mesh)

  def step_args(self, values: dict) -> tuple:
    return (values,)

  def member_of(self, tree: PyTree, k: int) -> PyTree:
    return jax.tree.map(lambda x: np.asarray(x)[k], tree)

  def member_state(self, state: PyTree, k: int, mesh: Any) -> PyTree:
    return parallel.copy_to_devices(take(state, k), mesh)

  def host_batches(self, streams: Sequence[Iterator]) -> Iterator:
    """Every replica's batch of each step (its own data order), stacked along axis 0."""
    for raws in zip(*streams):
      yield jax.tree.map(lambda *xs: np.stack(xs), *raws)

  def rows_shape(self, steps: int, batch: int) -> tuple[int, ...]:
    return (self.size, steps, batch)

  def rows_at(self, rows: jax.Array, step: Any) -> jax.Array:
    return rows[:, step]

  def carry(self, carries: Sequence[dict | None]) -> dict | None:
    if any(c is None for c in carries):
      return None

    def stacked(parts):
      if parts[0] is None:
        return None
      return {"sums": {k: np.stack([np.asarray(p["sums"][k]) for p in parts]) for k in parts[0]["sums"]},
              "counts": dict(parts[0]["counts"])}
    return {part: stacked([c[part] for c in carries]) for part in ("epoch", "window")}

  def member_carry(self, carry: dict, k: int) -> dict:
    return {part: None if v is None else {"sums": {key: np.asarray(x)[k].tolist() for key, x in v["sums"].items()},
                                         "counts": v["counts"]}
            for part, v in carry.items()}


def layout_for(config: ml_collections.ConfigDict, size: int) -> OneRun | Stacked:
  """How the ``size`` members of ``config``'s command are stepped (``config`` resolved)."""
  if size == 1:
    return OneRun()
  shards = int(config.replica_shards)
  if shards > 1 and jax.process_count() > 1:
    raise config_lib.ConfigError("config.replica_shards: replica groups across processes are not supported yet; "
                                 "use replica_shards=1 (replicas replicated, each batch sharded over every device)")
  return Stacked(size, config.replica_loop, "replica" if shards > 1 else None)
