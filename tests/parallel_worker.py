"""Subprocess worker for tests/test_parallel.py (device count must be set before JAX starts).

    python tests/parallel_worker.py steps  OUT.npz DATA_DIR DEVICES SYNC_BN
    python tests/parallel_worker.py train  OUT.npz DATA_DIR LOCAL_DEVICES WORKDIR [PORT PROCESS_ID NUM_PROCESSES]
    python tests/parallel_worker.py restore OUT.npz DATA_DIR LOCAL_DEVICES WORKDIR
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

from mmkd_jax import checkpoint, parallel, train  # noqa: E402
from mmkd_jax.config_digits import digits_config  # noqa: E402
from mmkd_jax.data import pipeline  # noqa: E402
from mmkd_jax.models import get_model  # noqa: E402
from mmkd_jax.teachers import Teacher, fingerprint  # noqa: E402


def teachers():
  out = []
  for i in range(2):
    v = get_model("resnet8", 10).init(jax.random.key(40 + i), jnp.zeros((1, 32, 32, 3)))
    out.append(Teacher(f"s_resnet8{'ab'[i]}", "resnet8", 10, v, fingerprint(v)))
  return out


def config(sync_bn: bool = True):
  c = digits_config("mmkd", "smoke")
  c.data_dir = data_dir
  c.teacher_source = "online"
  c.sync_batch_norm = sync_bn
  c.async_checkpoints = False
  c.epochs = 1
  c.lr_milestones = (1,)
  # A gentle regime (beta 1, lr 0.01): with beta 100 and random teachers the first steps move the
  # loss 52 -> 24 and amplify float32 rounding of the reduction order ~1e6-fold (float64 agrees).
  c.kd.beta = float(os.environ.get("MMKD_BETA", "1.0"))
  c.lr = float(os.environ.get("MMKD_LR", "0.01"))
  return c


def flat(tree):
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


if mode == "steps":
  c = config(sync_bn=sys.argv[5] == "1")
  loaded = teachers()
  setup = train.build(c, loaded, None)
  batches = list(pipeline.train_batches(setup.train_source, setup.spec, c.batch_size, c.seed, 0,
                                        process_index=jax.process_index(), process_count=jax.process_count(),
                                        join=lambda i, e: {"replay": np.full(len(i), e, np.int32)}))
  state = train.init_state(setup, batches[0])
  if jax.config.jax_enable_x64:
    state = state.replace(params=jax.tree.map(lambda x: x.astype(jnp.float64), state.params),
                          meta_params=jax.tree.map(lambda x: x.astype(jnp.float64), state.meta_params),
                          opt_state=jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x,
                                                 state.opt_state),
                          meta_opt_state=jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x,
                                                      state.meta_opt_state))
  state = parallel.replicate(state, setup.mesh)
  tv = parallel.replicate(tuple(t.variables for t in loaded), setup.mesh)
  train_fn, meta_fn = jax.jit(setup.steps.train_step), jax.jit(setup.steps.meta_step)
  epoch = jnp.asarray(0, jnp.int32)
  losses, meta_losses = [], []
  for idx in range(10):
    raw = parallel.shard_batch(batches[idx], setup.mesh)
    state, m = train_fn(state, raw, tv, epoch)
    losses.append(float(m["loss"]))
    if idx % c.meta.freq == 0:
      state, mm = meta_fn(state, raw, tv, epoch)
      meta_losses.append(float(mm["meta_outer_loss"]))
  result = {"losses": np.array(losses), "meta_losses": np.array(meta_losses)}
  result.update({"params" + k: v for k, v in flat(state.params).items()})
  result.update({"meta" + k: v for k, v in flat(state.meta_params).items()})
  result.update({"stats" + k: v for k, v in flat(state.model_state).items()})
  if jax.process_index() == 0:
    np.savez(out, devices=len(jax.devices()), **result)
elif mode == "train":
  c = config()
  c.stop_at_step = 10
  summary = train.train_and_evaluate(c, sys.argv[5], teachers(), quiet=True)
  if jax.process_index() == 0:
    np.savez(out, step=int(jax.device_get(summary["state"].step)), processes=jax.process_count(),
             **{"params" + k: v for k, v in flat(summary["state"].params).items()},
             **{"meta" + k: v for k, v in flat(summary["state"].meta_params).items()})
elif mode == "restore":
  c = config()
  loaded = teachers()
  setup = train.build(c, loaded, None)
  state, _, step = checkpoint.Checkpoints(sys.argv[5], async_save=False).restore(
      train.init_state(setup, train.example_batch(setup)))
  np.savez(out, step=step, **{"params" + k: v for k, v in flat(state.params).items()},
           **{"meta" + k: v for k, v in flat(state.meta_params).items()})
