"""How the loop's training steps reach the devices: the stepper of ``loop.run_epoch``.

``streamed``: one jitted train step (and meta step on its schedule) per host batch, the batches
coming from the grain pipeline (``config.data_placement = host``).

``Scanned``: the data live on the devices (``mmkd_jax.data.resident``) and one dispatch runs up
to ``config.scan_steps`` unrolled steps, each gathering its batch and taking the train step and,
where the training strategy says so (``methods.bilevel``), the meta step (one compiled program per pattern).
Dispatches end at multiples of ``scan_steps`` in the epoch and at ``stop_at_step``, so a stop
request, a preemption point or the end of an epoch waits for at most one dispatch; the per-step
metrics come back stacked and are logged as the streamed ones are. Both give the same states and
metrics bit for bit (tests/training/test_dispatch.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmkd_jax.training import parallel
from mmkd_jax.data import resident

PyTree = Any
StepMetrics = list[tuple[int, dict[str, Any]]]   # (batch position, metrics) of each step of a dispatch


def streamed(program: Any, setup: Any, epoch: int, first_batch: int) -> Iterator[StepMetrics]:
  """One dispatch per step over the host pipeline's batches (two in flight to the devices)."""
  epoch_array = jnp.asarray(epoch, jnp.int32)
  batches = parallel.prefetch_to_device(program.host_batches(epoch, first_batch), setup.mesh,
                                        batch_axis=program.layout.batch_axis)
  for idx, device_raw in enumerate(batches, start=first_batch):
    metrics = program.step(program.train_fn, device_raw, epoch_array)
    if setup.steps.strategy.is_meta_step(epoch, idx):
      metrics = {**metrics, **program.step(program.meta_fn, device_raw, epoch_array)}
    yield [(idx, metrics)]


class StepRow:
  """Row ``i`` of a dispatch's stacked metric: read from the device when first needed (one copy
  per metric and dispatch); what ``metrics.StepLog`` and the progress bar need of an array."""

  def __init__(self, stacked: jax.Array, i: int):
    self.stacked, self.i = stacked, i

  def is_ready(self) -> bool:
    return self.stacked.is_ready()

  def block_until_ready(self) -> "StepRow":
    self.stacked.block_until_ready()
    return self

  def copy_to_host_async(self) -> None:
    self.stacked.copy_to_host_async()

  def __array__(self, dtype=None, copy=None):
    row = np.asarray(self.stacked)[self.i]
    return row if dtype is None else row.astype(dtype)


def chunk_function(train_step: Callable, meta_step: Callable, layout: Any, batch_sharding: Any,
                   pattern: tuple[bool, ...]) -> Callable:
  """``chunk(state, arrays, rows, first, teacher_vars, epoch, values)``: the steps ``first ..
  first + len(pattern) - 1`` of the epoch on batches gathered from ``arrays`` at ``rows[step]``,
  step i followed by the meta step where ``pattern[i]``; returns the state and the train and meta
  metrics stacked over the steps (the meta ones over the meta steps).

  The steps are unrolled (``lax.scan(..., unroll=True)`` in effect, with a meta step where the
  schedule puts one), each one's inputs pass an optimisation barrier and each one's state is an
  output: every step then computes what the one-step programs of the streamed loop compute, bit
  for bit. In a rolled loop (``lax.fori_loop``) XLA:CPU computed the gradients in another order
  and 3.9x slower (resnet8, batch 64, this CPU). The kept states cost ``len(pattern)`` copies
  of the state in device memory during a dispatch (the memory plan counts them)."""

  def chunk(state, arrays, rows, first, teacher_vars, epoch, values):
    extra = layout.step_args(values)
    train_out, meta_out, kept = [], [], []
    for i, meta in enumerate(pattern):
      raw = resident.gather(arrays, layout.rows_at(rows, first + i))
      if batch_sharding is not None:
        raw = jax.lax.with_sharding_constraint(raw, batch_sharding)
      state, raw = jax.lax.optimization_barrier((state, raw))
      state, metrics = train_step(state, raw, teacher_vars, epoch, *extra)
      train_out.append(metrics)
      kept.append(state)
      if meta:
        state, raw = jax.lax.optimization_barrier((state, raw))
        state, metrics = meta_step(state, raw, teacher_vars, epoch, *extra)
        meta_out.append(metrics)
        kept.append(state)
    stack = lambda out: jax.tree.map(lambda *xs: jnp.stack(xs), *out) if out else {}
    # Every intermediate state leaves the program (and is dropped): XLA:CPU removes optimisation
    # barriers before it fuses, and a state update fused into the next step's computation rounds
    # differently (MMKD's first hypergradient norm moved by 1.3% without this).
    return state, stack(train_out), stack(meta_out), kept
  return chunk


class Scanned:
  """Device-resident data and up to ``scan_steps`` steps per dispatch, for one program: one
  compiled chunk per meta-step pattern met (a full dispatch, the epoch's last, one after a
  resume), each compiled once."""

  def __init__(self, setup: Any, program: Any, seeds: list[int], train_step: Callable, meta_step: Callable,
               quiet: bool):
    self.setup, self.seeds, self.quiet = setup, seeds, quiet
    self.length = max(1, min(setup.config.scan_steps, setup.steps_per_epoch))
    self._steps = (train_step, meta_step)
    self._compiled: dict[tuple[bool, ...], Any] = {}
    self.data: resident.ResidentData | None = None
    mesh, self.layout = setup.mesh, program.layout
    self._batch_sharding = self.layout.batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    spe, batch = setup.steps_per_epoch, setup.config.batch_size
    rows = jax.ShapeDtypeStruct(self.layout.rows_shape(spe, batch), jnp.int32,
                                sharding=resident.rows_sharding(mesh, self.layout.stacked))
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    self._abstract = (resident.abstract_arrays(setup, replicated), rows, scalar, program.teacher_vars, scalar,
                      program.values)
    self._out_shardings = (jax.tree.map(lambda x: x.sharding, program.state), replicated, replicated, None)
    self._state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), program.state)

  def compiled(self, pattern: tuple[bool, ...]) -> Any:
    if pattern not in self._compiled:
      if not self.quiet:
        print(f"compiling {len(pattern)} steps per dispatch ({sum(pattern)} meta) over device-resident data "
              "(once per run) ...", flush=True)
      chunk = chunk_function(self._steps[0], self._steps[1], self.layout, self._batch_sharding, pattern)
      jitted = jax.jit(chunk, donate_argnums=(0,), out_shardings=self._out_shardings)
      self._compiled[pattern] = jitted.lower(self._state, *self._abstract).compile()
    return self._compiled[pattern]

  def meta_flags(self, epoch: int) -> list[bool]:
    """Which batches of ``epoch`` the training strategy follows with a meta step."""
    return [self.setup.steps.strategy.is_meta_step(epoch, idx) for idx in range(self.setup.steps_per_epoch)]

  def boundary(self, epoch: int, position: int) -> int:
    """Where the dispatch starting at batch ``position`` ends: the next multiple of the dispatch
    length, the epoch's end or the step ``stop_at_step`` stops after."""
    spe = self.setup.steps_per_epoch
    end = min(spe, (position // self.length + 1) * self.length)
    stop = self.setup.config.stop_at_step - epoch * spe
    return stop if position < stop < end else end

  def epoch(self, program: Any, epoch: int, first_batch: int) -> Iterator[StepMetrics]:
    arrays = self.data.arrays(epoch)
    rows = self.data.rows(self.seeds, epoch, program.layout.stacked)
    flags = self.meta_flags(epoch)
    position = first_batch
    while position < self.setup.steps_per_epoch:
      end = self.boundary(epoch, position)
      pattern = tuple(flags[position:end])
      program.state, train_out, meta_out, _ = self.compiled(pattern)(
          program.state, arrays, rows, np.int32(position), program.teacher_vars, np.int32(epoch), program.values)
      out, metas = [], 0
      for i, meta in enumerate(pattern):
        metrics = {k: StepRow(v, i) for k, v in train_out.items()}
        if meta:
          metrics.update({k: StepRow(v, metas) for k, v in meta_out.items()})
          metas += 1
        out.append((position + i, metrics))
      yield out
      position = end

  def close(self) -> None:
    if self.data is not None:
      self.data.close()


def open_scanned(setup: Any, program: Any, seeds: list[int], train_step: Callable, meta_step: Callable,
                 replay_of: Callable[[int], int], quiet: bool) -> Scanned | None:
  """The stepper over device-resident data for ``config.data_placement`` device (or auto, when
  the memory plan fits), its first dispatch compiled before any data are read; None for host
  placement or auto's fallback."""
  config = setup.config
  if config.data_placement == "host":
    return None
  resident.check_placement(config, setup.spec)
  reason = resident.unsupported(config.dataset, setup.spec)
  plan = resident.plan(setup)
  if reason is None and config.data_placement == "auto" and not plan.fits():
    reason = f"the data need {plan.resident / 2 ** 30:.2f} GiB per device"
  if reason is None:
    scanned = Scanned(setup, program, seeds, train_step, meta_step, quiet)
    analysis = scanned.compiled(tuple(scanned.meta_flags(0)[:scanned.length])).memory_analysis()
    plan.temporaries = int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes) if analysis is not None else 0
    if config.data_placement == "device" or plan.fits():
      if not quiet:
        print(plan.describe(), flush=True)
      scanned.data = resident.ResidentData(setup, setup.mesh, replay_of)
      return scanned
    reason = f"the data and the step's temporaries need {plan.total / 2 ** 30:.2f} GiB per device"
  if not quiet:
    print(f"data_placement=auto: streaming from the host: {reason} ({plan.describe()})", flush=True)
  return None
