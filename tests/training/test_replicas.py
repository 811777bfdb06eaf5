"""Replicas: R students in one vmapped program equal R single runs; each stops and resumes alone."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax.training import run as run_lib
from mmkd_jax import config as config_lib
from mmkd_jax.config import replicas as replica_spec
from mmkd_jax.training import replicas
from mmkd_jax.training import steps as steps_lib
from mmkd_jax.teachers import stages as teacher_stages

from helpers import as_float64, digits_smoke, steps_and_state


def _raw(seed: int, like: dict) -> dict:
  """Another batch of the same shapes: a replica's own data."""
  rng = np.random.default_rng(seed)
  out = dict(like)
  out["image"] = jnp.asarray(rng.integers(0, 256, like["image"].shape).astype(np.uint8))
  out["label"] = jnp.asarray(rng.integers(0, 10, like["label"].shape).astype(np.int32))
  out["teacher_logits"] = like["teacher_logits"] * (1.0 + 0.1 * seed)
  return out


def _rel(a, b) -> float:
  """Max difference relative to the leaf's scale (leaves at rounding level, ~1e-18, count as 1e-3)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-3))


@pytest.mark.claim("replicas")
@pytest.mark.slow  # ~140 s: float64 compiles of the meta step, vmapped and single
def test_vmapped_steps_equal_single_steps_in_float64(kind="vmap"):
  """Three replicas (own seed, own batches) through 2 train steps and a meta step: the stacked
  program gives each single run's parameters, meta parameters and buffer to 1e-12 relative."""
  with jax.enable_x64(True):
    steps, _, raw = steps_and_state("mmkd", batch_size=8, **{"meta.lookahead_matching_steps": 1})
    raws = [_raw(k, raw) for k in range(3)]
    singles = [as_float64(steps_lib.init_state(steps, jax.device_get(raws[k]), seed=k)) for k in range(3)]
    train_fn, meta_fn = jax.jit(steps.train_step), jax.jit(steps.meta_step)
    vtrain = jax.jit(replicas.freeze_on_nonfinite(steps.train_step, kind))
    vmeta = jax.jit(replicas.freeze_on_nonfinite(steps.meta_step, kind))
    stacked = replicas.stack(singles)
    batch = replicas.stack(raws)
    epoch = jnp.asarray(1, jnp.int32)
    for _ in range(2):
      singles = [train_fn(s, r, (), epoch)[0] for s, r in zip(singles, raws)]
      stacked, metrics = vtrain(stacked, batch, (), epoch)
    singles = [meta_fn(s, r, (), epoch)[0] for s, r in zip(singles, raws)]
    stacked, meta_metrics = vmeta(stacked, batch, (), epoch)
    assert metrics["loss"].shape == (3,) and meta_metrics["meta_outer_loss"].shape == (3,)
    for k, single in enumerate(singles):
      mine = replicas.take(stacked, k)
      for a, b in zip(jax.tree.leaves((mine.params, mine.meta_params, mine.buffer.data)),
                      jax.tree.leaves((single.params, single.meta_params, single.buffer.data))):
        assert _rel(a, b) <= 1e-12
      assert int(mine.step) == int(single.step) == 2
    # The replicas are different students: their parameters differ.
    assert _rel(replicas.take(stacked, 0).params["student"]["conv1"]["kernel"],
                replicas.take(stacked, 1).params["student"]["conv1"]["kernel"]) > 1e-2


@pytest.mark.claim("replicas")
@pytest.mark.parametrize("kind", ["vmap", pytest.param("map", marks=pytest.mark.slow)])
def test_both_replica_loops_equal_single_steps_in_float64(kind):
  """The default-suite variant of the MMKD test above, for both replica loops: three AVER
  replicas (own seed, own batches) through 3 train steps equal their single runs to 1e-12."""
  with jax.enable_x64(True):
    steps, _, raw = steps_and_state("aver", batch_size=8)
    raws = [_raw(k, raw) for k in range(3)]
    singles = [as_float64(steps_lib.init_state(steps, jax.device_get(raws[k]), seed=k)) for k in range(3)]
    train_fn = jax.jit(steps.train_step)
    stepped = jax.jit(replicas.freeze_on_nonfinite(steps.train_step, kind))
    stacked, batch, epoch = replicas.stack(singles), replicas.stack(raws), jnp.asarray(1, jnp.int32)
    for _ in range(3):
      singles = [train_fn(s, r, (), epoch)[0] for s, r in zip(singles, raws)]
      stacked, metrics = stepped(stacked, batch, (), epoch)
    assert metrics["loss"].shape == (3,)
    for k, single in enumerate(singles):
      mine = replicas.take(stacked, k)
      for a, b in zip(jax.tree.leaves((mine.params, mine.model_state, mine.opt_state)),
                      jax.tree.leaves((single.params, single.model_state, single.opt_state))):
        assert _rel(a, b) <= 1e-12
      assert int(mine.step) == int(single.step) == 3
    assert _rel(replicas.take(stacked, 0).params["student"]["conv1"]["kernel"],
                replicas.take(stacked, 1).params["student"]["conv1"]["kernel"]) > 1e-2


@pytest.mark.parametrize("kind", ["vmap", "map"])
def test_a_nonfinite_replica_freezes_and_the_others_go_on(kind):
  steps, state, raw = steps_and_state("aver", batch_size=8)
  raws = [raw, dict(raw, teacher_logits=raw["teacher_logits"].at[0, 0, 0].set(jnp.nan))]
  stacked = replicas.stack([state, steps_lib.init_state(steps, jax.device_get(raw), seed=1)])
  before = jax.device_get(stacked)
  step = jax.jit(replicas.freeze_on_nonfinite(steps.train_step, kind))
  epoch = jnp.asarray(1, jnp.int32)
  for _ in range(2):
    stacked, _ = step(stacked, replicas.stack(raws), (), epoch)
  after = jax.device_get(stacked)
  np.testing.assert_array_equal(after.step, [2, 0])          # replica 1 stayed at its last good state
  assert after.nonfinite[0, 0] == -1 and after.nonfinite[1, 0] == 0
  for a, b in zip(jax.tree.leaves(replicas.take(after, 1).params), jax.tree.leaves(replicas.take(before, 1).params)):
    np.testing.assert_array_equal(a, b)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(after.params))
  message = steps.nonfinite_message(after.nonfinite[1], 10)
  assert "loss_kd" in message and "step 0" in message


@pytest.mark.slow  # 190 s with two other jobs on the 2 cores (three float64 compiles)
def test_replicas_with_their_own_hyperparameters_equal_single_runs_with_them():
  """Seeds 0 and 1 with their own lr, temperature, KD weight, weight decay, warm-up and label
  smoothing in one vmapped program (float64): each replica equals the single run configured with
  those values, over 3 steps."""
  fields = {"lr": 0.05, "temperature": 4.0, "weights.kd": 1.0, "weight_decay": 5e-4, "warmup_epochs": 0.0,
            "label_smoothing": 0.0}
  overrides = [{}, {"lr": 0.02, "temperature": 2.0, "weights.kd": 3.0, "weight_decay": 3e-3, "warmup_epochs": 0.5,
                    "label_smoothing": 0.1}]
  with jax.enable_x64(True):
    singles, raws, fns = [], [], []
    for k, o in enumerate(overrides):
      steps, _, raw = steps_and_state("aver", batch_size=8, **o)
      raws.append(_raw(k, raw))
      singles.append(as_float64(steps_lib.init_state(steps, jax.device_get(raws[k]), seed=k)))
      fns.append(jax.jit(steps.train_step))
      if k == 0:
        base = steps
    values = {f: jnp.asarray([o.get(f, default) for o in overrides]) for f, default in fields.items()}
    assert float(base.config.lr) == 0.05 and base.config.temperature == 4.0 and base.config.weights.kd == 1.0
    step = jax.jit(replicas.freeze_on_nonfinite(replicas.step_with_values(base, "train_step"), "vmap"))
    stacked, batch, epoch = replicas.stack(singles), replicas.stack(raws), jnp.asarray(0, jnp.int32)
    initial_1 = singles[1]
    for _ in range(3):
      singles = [fn(s, r, (), epoch)[0] for fn, s, r in zip(fns, singles, raws)]
      stacked, metrics = step(stacked, batch, (), epoch, values)
    for k, single in enumerate(singles):
      for a, b in zip(jax.tree.leaves(replicas.take(stacked, k).params), jax.tree.leaves(single.params)):
        assert _rel(a, b) <= 1e-12
    # The values did act: replica 1 (seed 1, its own batches) without them moves elsewhere.
    assert metrics["loss_kd"].shape == (2,)
    without = initial_1
    for _ in range(3):
      without = fns[0](without, raws[1], (), epoch)[0]
    assert _rel(without.params["student"]["conv1"]["kernel"],
                replicas.take(stacked, 1).params["student"]["conv1"]["kernel"]) > 1e-3


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
  from helpers import save_random_digits_teachers  # pylint: disable=import-outside-toplevel
  return save_random_digits_teachers(str(tmp_path_factory.mktemp("teachers"))), str(tmp_path_factory.mktemp("tfds"))


def _config(setting, **overrides):
  teacher_dir, data_dir = setting
  c = digits_smoke(teacher_dir=teacher_dir, data_dir=data_dir, teacher_source="online", epochs=1,
                   lr_milestones=(1,), async_checkpoints=False, method="aver", lr=0.01)
  return config_lib.validate(config_lib.set_fields(c, overrides))


def _train(config, workdir):
  loaded = teacher_stages.load_teachers(config)
  cache = teacher_stages.open_cache(config, loaded)
  if replica_spec.replica_seeds(config):
    return run_lib.train_members(config, workdir, loaded, cache, quiet=True)
  return run_lib.train_and_evaluate(config, workdir, loaded, cache, quiet=True)


def _params(state):
  return jax.tree.leaves(jax.device_get(state.params))


def _tree_rel(a_leaves, b_leaves) -> float:
  """The difference of two parameter trees relative to the second's size (global 2-norms): float32
  rounding of a different reduction order averages over the leaves instead of being judged on a
  leaf whose scale after one step is itself at rounding level."""
  diff = sum(float(np.sum(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
             for a, b in zip(a_leaves, b_leaves))
  size = sum(float(np.sum(np.square(np.asarray(b, np.float64)))) for b in b_leaves)
  return float(np.sqrt(diff / size))


@pytest.mark.claim("replicas")
def test_a_replica_trains_with_its_own_hyperparameters_through_the_driver(tmp_path, setting):
  """``replicas="0,0:weights.kd=3:lr=0.02"`` through the driver (main's path): after one step the
  second replica is the single run with those values and not the first replica (the values reach
  the compiled step, not only its directory name). Float32 rounding of the vmapped program's other
  reduction order moves with the CPU: 3e-9 of the parameters' norm measured here, up to 5.1e-6
  absolute (1.5e-5 of the leaf's scale) on one element of conv1's kernel on CI's machine; the first
  replica is 1.3e-3 away, so the bound sits at 1e-4."""
  both = _train(_config(setting, replicas="0,0:lr=0.02:weights.kd=3", stop_at_step=1), str(tmp_path / "both"))
  assert [s["member"]["workdir"].rsplit("/", 1)[-1] for s in both["summaries"]] == ["seed0", "seed0_lr=0.02_weights.kd=3"]
  own = _train(_config(setting, lr=0.02, **{"weights.kd": 3.0}, stop_at_step=1), str(tmp_path / "own"))
  assert _tree_rel(_params(replicas.take(both["state"], 1)), _params(own["state"])) <= 1e-4
  assert _rel(replicas.take(both["state"], 0).params["student"]["conv1"]["kernel"],
              replicas.take(both["state"], 1).params["student"]["conv1"]["kernel"]) > 1e-3


@pytest.mark.claim("replicas", 57)
@pytest.mark.slow
def test_replicas_start_as_their_single_runs_resume_exactly_and_write_run_directories(tmp_path, setting):
  """Seeds 0 and 1 in one program. After one step each replica is the single run of its seed
  (its own initialisation and data order; float32 rounding only: at most 1e-4 of the parameters'
  norm, as the test above, where a wrong seed or batch order moves ~1e-2 — later steps of
  this random-teacher setting amplify float32 rounding ~1e4-fold, so exactness over many steps
  is the float64 test above). Preempted after 5 steps and resumed, the replicas end bit for bit
  where an uninterrupted replica run ends; each seed's directory is an ordinary run."""
  first = _train(_config(setting, replicas="0,1", stop_at_step=1), str(tmp_path / "one_step"))
  for s in (0, 1):
    single = _train(_config(setting, seed=s, stop_at_step=1), str(tmp_path / f"single{s}"))
    assert _tree_rel(_params(replicas.take(first["state"], s)), _params(single["state"])) <= 1e-4
  straight = _train(_config(setting, replicas="0,1"), str(tmp_path / "straight"))
  workdir = str(tmp_path / "resumed")
  first = _train(_config(setting, replicas="0,1", stop_at_step=5), workdir)
  assert [s["status"] for s in first["summaries"]] == ["preempted", "preempted"]
  assert not os.path.exists(os.path.join(workdir, "seed0", "summary.json"))
  assert os.listdir(os.path.join(workdir, "seed1", "checkpoints")) == ["5"]
  done = _train(_config(setting, replicas="0,1"), workdir)
  for a, b in zip(_params(done["state"]), _params(straight["state"])):
    np.testing.assert_array_equal(a, b)
  for k in (0, 1):
    summary = done["summaries"][k]
    assert summary["status"] == "finished" and summary["seed"] == k and summary["epochs_completed"] == 1
    assert summary["final_top1"] == straight["summaries"][k]["final_top1"]
    with open(os.path.join(workdir, f"seed{k}", "summary.json")) as f:
      assert json.load(f)["seed"] == k
    with open(os.path.join(workdir, f"seed{k}", "config.json")) as f:
      assert json.load(f)["seed"] == k
    assert os.listdir(os.path.join(workdir, f"seed{k}", "best"))
  assert _rel(replicas.take(done["state"], 0).params["student"]["conv1"]["kernel"],
              replicas.take(done["state"], 1).params["student"]["conv1"]["kernel"]) > 1e-2
