"""The trainer end to end on digits: resume, SIGTERM, NaN guard, config validation."""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax import config as config_lib
from mmkd_jax import teachers as teachers_lib
from mmkd_jax import runs, train
from mmkd_jax.loop import NonFiniteLossError
from mmkd_jax.models import get_model
from mmkd_jax import teacher_stages

from helpers import digits_smoke, digits_teacher_record


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """Two random (untrained) resnet8 teachers: enough to exercise every code path fast."""
  root = tmp_path_factory.mktemp("teachers")
  for i, name in enumerate(("s_resnet8a", "s_resnet8b")):
    model = get_model("resnet8", 10)
    variables = model.init(jax.random.key(10 + i), jnp.zeros((1, 32, 32, 3)))
    teachers_lib.save_teacher(str(root / f"digits_{name}"), "resnet8", 10, variables, digits_teacher_record(name))
  return str(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(teacher_dir, data_dir, **overrides):
  c = digits_smoke(teacher_dir=teacher_dir, data_dir=data_dir, teacher_source="online", epochs=1,
                   lr_milestones=(1,), async_checkpoints=False)
  return config_lib.set_fields(c, overrides)


def _run(config, workdir):
  config = config_lib.validate(config)
  loaded = teacher_stages.load_teachers(config)
  return train.train_and_evaluate(config, workdir, loaded, teacher_stages.open_cache(config, loaded), quiet=True)


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.model_state, state.opt_state, state.meta_params, state.buffer)))]


def _metric_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "train/images_per_s")} for line in f]


@pytest.mark.parametrize("method", ["aver", pytest.param("mmkd", marks=pytest.mark.slow)])
def test_resume_after_a_stop_gives_identical_state_and_metrics(tmp_path, teacher_dir, data_dir, method):
  """Stopped at step 8 (mid-epoch, mid-window) and resumed: the state, the summary and every
  logged record equal the uninterrupted run's (MMKD in the default suite: tests/test_kill.py)."""
  config = _config(teacher_dir, data_dir, method=method, epochs=2, log_every=3)
  straight = _run(config, str(tmp_path / "straight"))
  assert straight["status"] == "finished" and os.path.exists(tmp_path / "straight" / "summary.json")
  killed = _run(_config(teacher_dir, data_dir, method=method, epochs=2, log_every=3, stop_at_step=8),
                str(tmp_path / "resumed"))
  assert killed["status"] == "preempted"
  assert int(jax.device_get(killed["state"].step)) == 8
  resumed = _run(config, str(tmp_path / "resumed"))
  assert resumed["status"] == "finished"
  for a, b in zip(_leaves(straight["state"]), _leaves(resumed["state"])):
    np.testing.assert_array_equal(a, b)
  assert resumed["final_top1"] == straight["final_top1"]
  records = _metric_records(str(tmp_path / "straight"))
  assert _metric_records(str(tmp_path / "resumed")) == records
  steps = [r["step"] for r in records if "train/loss" in r and "epoch" not in r]
  assert steps == [3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43]  # windows of 3, per epoch of 22 steps


def test_the_mmkd_loop_takes_meta_steps_on_the_reference_schedule(tmp_path, teacher_dir, data_dir):
  """Every meta.freq batches and on the loader's last batch when the split divides into whole
  batches: 10 batches of 16 with freq 4 -> meta steps after batches 1, 5, 9 and 10."""
  config = _config(teacher_dir, data_dir, method="mmkd", batch_size=16, eval_batch_size=16,
                   train_split="train[:160]", log_every=1, **{"meta.freq": 4, "mmkd.buffer_size": 16,
                                                              "meta.lookahead_matching_steps": 1})
  for entry in config.teachers:  # the full-split teachers of the fixture, named explicitly
    entry.checkpoint = os.path.join(teacher_dir, f"digits_{entry.name}")
  _run(config, str(tmp_path / "w"))
  records = [r for r in _metric_records(str(tmp_path / "w")) if "train/loss" in r and "epoch" not in r]
  assert [r["step"] for r in records] == list(range(1, 11))
  assert [r["step"] for r in records if "train/meta_outer_loss" in r] == [1, 5, 9, 10]
  # Per-class mean teacher weights are logged each epoch: (classes, teachers), rows on the simplex.
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f if "teacher_weights/per_class" in line]
  per_class = np.array(records[-1]["teacher_weights/per_class"], float)
  assert per_class.shape == (10, 2)
  np.testing.assert_allclose(per_class.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(per_class.mean(axis=0) @ [1, 1], 1.0, rtol=1e-5)


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, teacher_dir, data_dir, monkeypatch):
  calls = {"n": 0}
  original = train.parallel.shard_batch

  def shard_and_maybe_terminate(batch, mesh, *args):
    calls["n"] += 1
    if calls["n"] == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(batch, mesh, *args)

  monkeypatch.setattr(train.parallel, "shard_batch", shard_and_maybe_terminate)
  summary = _run(_config(teacher_dir, data_dir, method="aver"), str(tmp_path / "w"))
  assert summary["status"] == "preempted"
  step = int(jax.device_get(summary["state"].step))
  assert 0 < step < 22  # stopped inside the first epoch, right after the signal
  assert os.listdir(tmp_path / "w" / "checkpoints") == [str(step)]
  assert not os.path.exists(tmp_path / "w" / "summary.json")


def test_nan_loss_stops_and_names_the_term(tmp_path, teacher_dir, data_dir):
  broken = str(tmp_path / "teachers")
  os.makedirs(broken)
  for i, name in enumerate(("s_resnet8a", "s_resnet8b")):
    variables = get_model("resnet8", 10).init(jax.random.key(i), jnp.zeros((1, 32, 32, 3)))
    if i == 1:
      variables["params"]["fc"]["bias"] = variables["params"]["fc"]["bias"] * jnp.nan
    teachers_lib.save_teacher(os.path.join(broken, f"digits_{name}"), "resnet8", 10, variables, digits_teacher_record(name))
  with pytest.raises(NonFiniteLossError, match=r"'loss_kd' became NaN/inf at step 0 \(epoch 1"):
    _run(_config(broken, data_dir, method="aver"), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints") or not os.listdir(tmp_path / "w" / "checkpoints")


def test_missing_teacher_and_missing_cache_are_clear(tmp_path, teacher_dir, data_dir):
  config = config_lib.validate(_config(str(tmp_path / "nothing"), data_dir))
  with pytest.raises(FileNotFoundError, match="mode=train_teacher"):
    teacher_stages.load_teachers(config)
  config = config_lib.validate(_config(teacher_dir, data_dir, teacher_source="precomputed",
                                       cache_dir=str(tmp_path / "c")))
  with pytest.raises(FileNotFoundError, match="mode=precompute"):
    teacher_stages.open_cache(config, teacher_stages.load_teachers(config))


def test_batch_size_must_divide_over_devices():
  import types  # pylint: disable=import-outside-toplevel
  from mmkd_jax import parallel  # pylint: disable=import-outside-toplevel
  eight = types.SimpleNamespace(devices=np.empty((1, 8)), shape={"replica": 1, "data": 8})
  parallel.check_batch_size(64, eight)
  with pytest.raises(ValueError, match="batch_size 60 does not divide evenly over 8 devices"):
    parallel.check_batch_size(60, eight)


@pytest.mark.slow
def test_online_and_precomputed_teachers_give_the_same_losses(tmp_path, teacher_dir, data_dir):
  base = config_lib.validate(_config(teacher_dir, data_dir, cache_dtype="float32",
                                     cache_dir=str(tmp_path / "cache"), num_replays=2))
  loaded = teacher_stages.load_teachers(base)
  teacher_stages.precompute(base, loaded)
  results = {}
  for source in ("online", "precomputed"):
    c = config_lib.validate(_config(teacher_dir, data_dir, cache_dtype="float32", cache_dir=str(tmp_path / "cache"),
                                    num_replays=2, teacher_source=source))
    setup = train.build(c, loaded, teacher_stages.open_cache(c, loaded))
    raw = next(iter(train.train_batches(setup, 1)))
    state = train.initial_state(setup)
    teacher_vars = tuple(t.variables for t in loaded) if source == "online" else ()
    _, metrics = jax.jit(setup.steps.train_step)(state, jax.tree.map(jnp.asarray, raw), teacher_vars,
                                                 jnp.asarray(0, jnp.int32))
    results[source] = jax.device_get(metrics)
  for key in ("loss", "loss_ce", "loss_kd", "loss_feat"):
    np.testing.assert_allclose(results["online"][key], results["precomputed"][key], rtol=2e-5, err_msg=key)


def test_seeds_give_different_initial_parameters_and_batch_orders(teacher_dir, data_dir):
  """Seeds are independent: the digits table once showed seeds 0 and 1 identical for every method."""
  setups = [train.build(config_lib.validate(_config(teacher_dir, data_dir, seed=s, method="aver")),
                        teachers_lib_random(), None) for s in (0, 1)]
  states = [train.initial_state(s) for s in setups]
  first = [np.asarray(s.params["student"]["conv1"]["kernel"]) for s in states]
  assert not np.array_equal(*first)
  orders = [next(iter(train.train_batches(s, 0)))["index"] for s in setups]
  assert not np.array_equal(*orders)
  same = train.initial_state(setups[0])
  np.testing.assert_array_equal(np.asarray(same.params["student"]["conv1"]["kernel"]), first[0])


def teachers_lib_random():
  from helpers import random_teachers  # pylint: disable=import-outside-toplevel
  return random_teachers(("resnet8", "resnet8"), names=("s_resnet8a", "s_resnet8b"))


def test_resuming_with_another_config_names_the_fields(tmp_path, teacher_dir, data_dir):
  """Evaluating or resuming a workdir with another method is a config mismatch, not corruption:
  the message names the fields and says the state's shape differs; no checkpoint is touched."""
  workdir = str(tmp_path / "w")
  _run(_config(teacher_dir, data_dir, method="aver"), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(runs.ConfigMismatchError) as error:
    _run(_config(teacher_dir, data_dir, method="mmkd"), workdir)
  message = str(error.value)
  assert "method: 'aver' -> 'mmkd'" in message and "shape differs" in message
  assert "delete" not in message.lower()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, "corrupt"))
  # A field that may change (more epochs) resumes.
  resumed = _run(_config(teacher_dir, data_dir, method="aver", epochs=2), workdir)
  assert resumed["epochs_completed"] == 2
  with pytest.raises(runs.ConfigMismatchError, match="lr: 0.05 -> 0.1 .*shape is the same"):
    _run(_config(teacher_dir, data_dir, method="aver", epochs=3, lr=0.1), workdir)


@pytest.mark.slow
def test_warmup_epochs_use_uniform_weights_and_no_meta_steps(tmp_path, teacher_dir, data_dir):
  _run(_config(teacher_dir, data_dir, method="mmkd", epochs=2, **{"meta.warmup_epochs": 1}), str(tmp_path / "w"))
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    epochs = [json.loads(line) for line in f if '"epoch"' in line]
  assert "train/meta_outer_loss" not in epochs[0] and "train/meta_outer_loss" in epochs[1]
  np.testing.assert_allclose(epochs[0]["teacher_weights/logits/s_resnet8a"], 0.5, rtol=1e-6)
  assert abs(epochs[1]["teacher_weights/logits/s_resnet8a"] - 0.5) > 1e-6


def test_pipeline_skips_what_exists(tmp_path, teacher_dir, data_dir, capsys):
  config = config_lib.validate(_config(teacher_dir, data_dir, teacher_source="precomputed",
                                       cache_dir=str(tmp_path / "cache")))
  teacher_stages.train_missing_teachers(config)  # both exist: nothing is trained
  assert not [d for d in os.listdir(teacher_dir) if d.endswith(".run")]
  loaded = teacher_stages.load_teachers(config)
  teacher_stages.precompute(config, loaded)
  stamp = os.path.getmtime(tmp_path / "cache")
  teacher_stages.precompute(config, loaded)
  assert "teacher cache already present" in capsys.readouterr().out
  assert os.path.getmtime(tmp_path / "cache") == stamp


def test_nan_stops_within_two_log_windows_not_at_the_end_of_the_epoch(tmp_path, data_dir, monkeypatch):
  """A NaN at step 0 used to run the rest of the epoch (22 steps) on NaN weights."""
  broken = str(tmp_path / "teachers")
  os.makedirs(broken)
  for i, name in enumerate(("s_resnet8a", "s_resnet8b")):
    variables = get_model("resnet8", 10).init(jax.random.key(i), jnp.zeros((1, 32, 32, 3)))
    variables["params"]["fc"]["bias"] = variables["params"]["fc"]["bias"] * jnp.nan
    teachers_lib.save_teacher(os.path.join(broken, f"digits_{name}"), "resnet8", 10, variables, digits_teacher_record(name))
  seen = {"batches": 0}
  original = train.train_batches

  def counted(setup, epoch, start_batch=0):
    for batch in original(setup, epoch, start_batch):
      seen["batches"] += 1
      yield batch

  monkeypatch.setattr(train, "train_batches", counted)
  with pytest.raises(NonFiniteLossError, match=r"'loss_kd' became NaN/inf at step 0"):
    _run(_config(broken, data_dir, method="aver", log_every=2), str(tmp_path / "w"))
  assert seen["batches"] <= 1 + 3 * 2  # the example batch, then at most three log windows
