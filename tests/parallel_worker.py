"""Subprocess worker for tests/training/test_parallel.py (device count must be set before JAX starts).

    python tests/parallel_worker.py steps  OUT.npz DATA_DIR DEVICES SYNC_BN            (env MMKD_SEED)
    python tests/parallel_worker.py replica_steps OUT.npz DATA_DIR DEVICES REPLICA_SHARDS
    python tests/parallel_worker.py train  OUT.npz DATA_DIR LOCAL_DEVICES WORKDIR [PORT PROCESS_ID NUM_PROCESSES]
    python tests/parallel_worker.py restore OUT.npz DATA_DIR LOCAL_DEVICES WORKDIR

Environment: MMKD_METHOD, MMKD_LR, MMKD_BETA, MMKD_BN_GROUPS, MMKD_GRAM_PER_BN_GROUP (the config),
MMKD_PLACEMENT and MMKD_SCAN_STEPS (config.data_placement / scan_steps), MMKD_X64.
"""

from __future__ import annotations

import os
import sys

mode, out, data_dir, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

if os.environ.get("MMKD_X64") == "1":  # float64 separates rounding amplification from real differences
  jax.config.update("jax_enable_x64", True)

if mode in ("train", "steps") and len(sys.argv) > 7:
  port, pid, nproc = sys.argv[-3], int(sys.argv[-2]), int(sys.argv[-1])
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import as_float64, digits_smoke, random_teachers  # noqa: E402

from mmkd_jax.training import run as run_lib
from mmkd_jax.runs import checkpoint  # noqa: E402
from mmkd_jax.training import parallel
from mmkd_jax.training import setup as train
from mmkd_jax import config as config_lib  # noqa: E402


def teachers():
  return random_teachers(("resnet8", "resnet8"), seed=40, names=("s_resnet8a", "s_resnet8b"))


def config(sync_bn: bool = True):
  # A gentle regime (feature weight 1, lr 0.01): with 100 and random teachers the first steps move
  # the loss 52 -> 24 and amplify float32 rounding of the reduction order ~1e6-fold (float64 agrees).
  return config_lib.resolve(digits_smoke(
      data_dir=data_dir, teacher_source="online", sync_batch_norm=sync_bn, async_checkpoints=False,
      epochs=1, lr_milestones=(1,), **({"weights.feat": float(os.environ.get("MMKD_BETA", "1.0")),
                                         "mmkd.gram_per_bn_group": os.environ.get("MMKD_GRAM_PER_BN_GROUP") == "1"}
                                        if os.environ.get("MMKD_METHOD", "mmkd") == "mmkd" else {}),
      lr=float(os.environ.get("MMKD_LR", "0.01")), batch_norm_groups=int(os.environ.get("MMKD_BN_GROUPS", "0")),
      method=os.environ.get("MMKD_METHOD", "mmkd"), data_placement=os.environ.get("MMKD_PLACEMENT", "host"),
      scan_steps=int(os.environ.get("MMKD_SCAN_STEPS", "1"))))


def flat(tree):
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def initial(setup):
  state = train.initial_state(setup)
  # BatchNorm statistics and the buffer stay as built (float32), as these tests were calibrated.
  return as_float64(state, ("params", "meta_params", "opt_state", "meta_opt_state")) if jax.config.jax_enable_x64 else state


def record(state, prefix=""):
  result = {prefix + "params" + k: v for k, v in flat(state.params).items()}
  result.update({prefix + "meta" + k: v for k, v in flat(state.meta_params).items()})
  result.update({prefix + "stats" + k: v for k, v in flat(state.model_state).items()})
  return result


STEPS = int(os.environ.get("MMKD_STEPS", "10"))


if mode == "steps":
  c = config(sync_bn=sys.argv[5] == "1")
  c.seed = int(os.environ.get("MMKD_SEED", "0"))
  loaded = teachers()
  setup = train.build(c, loaded, None)
  batches = list(train.train_batches(setup, 0))
  state = parallel.copy_to_devices(initial(setup), setup.mesh)
  tv = parallel.copy_to_devices(tuple(t.variables for t in loaded), setup.mesh)
  train_fn, meta_fn = jax.jit(setup.steps.train_step), jax.jit(setup.steps.meta_step)
  epoch = jnp.asarray(0, jnp.int32)
  losses, meta_losses = [], []
  for idx in range(STEPS):
    raw = parallel.shard_batch(batches[idx], setup.mesh)
    state, m = train_fn(state, raw, tv, epoch)
    losses.append(float(m["loss"]))
    if setup.method_spec.bilevel and idx % c.meta.freq == 0:
      state, mm = meta_fn(state, raw, tv, epoch)
      meta_losses.append(float(mm["meta_outer_loss"]))
  result = {"losses": np.array(losses), "meta_losses": np.array(meta_losses), **record(state)}
  if jax.process_index() == 0:
    np.savez(out, devices=len(jax.devices()), **result)
elif mode == "replica_steps":
  # The replicas of seeds 0 and 1 on a (shards, devices/shards) ('replica', 'data') mesh: the
  # stacked state sharded over 'replica', each replica's batch over its group's 'data' devices.
  from mmkd_jax.training import replicas  # noqa: E402  pylint: disable=import-outside-toplevel
  from mmkd_jax.config import replicas as replica_spec  # noqa: E402  pylint: disable=import-outside-toplevel
  shards, seeds = int(sys.argv[5]), (0, 1)
  c = config(sync_bn=True)
  c.replicas, c.replica_shards, c.replica_loop = "0,1", shards, "vmap"
  config_lib.validate(c)
  loaded = teachers()
  mesh = parallel.data_mesh(shards)
  setups = [train.build(replica_spec.replica_config(c, s), loaded, None, mesh=mesh) for s in seeds]
  streams = [list(train.train_batches(setup, 0)) for setup in setups]
  state = parallel.shard_replicas(replicas.stack([initial(setup) for setup in setups]), mesh)
  tv = parallel.copy_to_devices(tuple(t.variables for t in loaded), mesh)
  steps = setups[0].steps
  train_fn = jax.jit(replicas.freeze_on_nonfinite(steps.train_step, "vmap", "replica"))
  meta_fn = jax.jit(replicas.freeze_on_nonfinite(steps.meta_step, "vmap", "replica"))
  epoch = jnp.asarray(0, jnp.int32)
  for idx in range(STEPS):
    raw = parallel.shard_batch(replicas.stack([stream[idx] for stream in streams]), mesh, batch_axis=1)
    state, _ = train_fn(state, raw, tv, epoch)
    if steps.method_spec.bilevel and idx % c.meta.freq == 0:
      state, _ = meta_fn(state, raw, tv, epoch)
  kernel = jax.tree.leaves(state.params)[0]
  result = {"mesh_shape": np.array([mesh.shape["replica"], mesh.shape["data"]]),
            "state_spec": np.array(str(kernel.sharding.spec)),
            "shard_rows": np.array(sorted({s.data.shape[0] for s in kernel.addressable_shards}))}
  for k in range(len(seeds)):
    result.update(record(replicas.take(state, k), prefix=f"r{k}_"))
  np.savez(out, devices=len(jax.devices()), **result)
elif mode == "train":
  c = config()
  c.stop_at_step = 10
  initial = train.initial_state(train.build(c, teachers(), None))
  summary = run_lib.train_and_evaluate(c, sys.argv[5], teachers(), quiet=True)
  if jax.process_index() == 0:
    np.savez(out, step=int(jax.device_get(summary["state"].step)), processes=jax.process_count(),
             **{"init_params" + k: v for k, v in flat(initial.params).items()},
             **{"init_meta" + k: v for k, v in flat(initial.meta_params).items()},
             **{"params" + k: v for k, v in flat(summary["state"].params).items()},
             **{"meta" + k: v for k, v in flat(summary["state"].meta_params).items()})
elif mode == "restore":
  c = config()
  loaded = teachers()
  setup = train.build(c, loaded, None)
  state, _, step = checkpoint.Checkpoints(sys.argv[5], async_save=False).restore(train.initial_state(setup))
  np.savez(out, step=step, **{"params" + k: v for k, v in flat(state.params).items()},
           **{"meta" + k: v for k, v in flat(state.meta_params).items()})
