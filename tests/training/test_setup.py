"""The trainer end to end on digits: setup (missing teachers or cache, batch size over devices),
online and precomputed teachers, seeds, a resume refused for another config, the pipeline's
stages (the epoch loop itself: tests/training/test_loop.py)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax import config as config_lib
from mmkd_jax.runs import identity as run_identity
from mmkd_jax.training import setup as train
from mmkd_jax.teachers import stages as teacher_stages

from helpers import run_trainer, trainer_config


@pytest.mark.claim(14, 15)
def test_missing_teacher_and_missing_cache_are_clear(tmp_path, teacher_dir, data_dir):
  config = config_lib.validate(trainer_config(str(tmp_path / "nothing"), data_dir))
  with pytest.raises(FileNotFoundError, match="mode=train_teacher"):
    teacher_stages.load_teachers(config)
  config = config_lib.validate(trainer_config(teacher_dir, data_dir, teacher_source="precomputed",
                                       cache_dir=str(tmp_path / "c")))
  with pytest.raises(FileNotFoundError, match="mode=precompute"):
    teacher_stages.open_cache(config, teacher_stages.load_teachers(config))

@pytest.mark.claim(28)
def test_batch_size_must_divide_over_devices():
  import types  # pylint: disable=import-outside-toplevel
  from mmkd_jax.training import parallel  # pylint: disable=import-outside-toplevel
  eight = types.SimpleNamespace(devices=np.empty((1, 8)), shape={"replica": 1, "data": 8})
  parallel.check_batch_size(64, eight)
  with pytest.raises(ValueError, match="batch_size 60 does not divide evenly over 8 devices"):
    parallel.check_batch_size(60, eight)

@pytest.mark.slow
def test_online_and_precomputed_teachers_give_the_same_losses(tmp_path, teacher_dir, data_dir):
  base = config_lib.validate(trainer_config(teacher_dir, data_dir, cache_dtype="float32",
                                     cache_dir=str(tmp_path / "cache"), num_replays=2))
  loaded = teacher_stages.load_teachers(base)
  teacher_stages.precompute(base, loaded)
  results = {}
  for source in ("online", "precomputed"):
    c = config_lib.validate(trainer_config(teacher_dir, data_dir, cache_dtype="float32", cache_dir=str(tmp_path / "cache"),
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
  setups = [train.build(config_lib.validate(trainer_config(teacher_dir, data_dir, seed=s, method="aver")),
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

@pytest.mark.claim(20)
def test_resuming_with_another_config_names_the_fields(tmp_path, teacher_dir, data_dir):
  """Evaluating or resuming a workdir with another method is a config mismatch, not corruption:
  the message names the fields and says the state's shape differs; no checkpoint is touched."""
  workdir = str(tmp_path / "w")
  run_trainer(trainer_config(teacher_dir, data_dir, method="aver"), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(run_identity.ConfigMismatchError) as error:
    run_trainer(trainer_config(teacher_dir, data_dir, method="mmkd"), workdir)
  message = str(error.value)
  assert "method: 'aver' -> 'mmkd'" in message and "shape differs" in message
  assert "delete" not in message.lower()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, "corrupt"))
  # A field that may change (more epochs) resumes.
  resumed = run_trainer(trainer_config(teacher_dir, data_dir, method="aver", epochs=2), workdir)
  assert resumed["epochs_completed"] == 2
  with pytest.raises(run_identity.ConfigMismatchError, match="lr: 0.05 -> 0.1 .*shape is the same"):
    run_trainer(trainer_config(teacher_dir, data_dir, method="aver", epochs=3, lr=0.1), workdir)

def test_pipeline_skips_what_exists(tmp_path, teacher_dir, data_dir, capsys):
  config = config_lib.validate(trainer_config(teacher_dir, data_dir, teacher_source="precomputed",
                                       cache_dir=str(tmp_path / "cache")))
  teacher_stages.train_missing_teachers(config)  # both exist: nothing is trained
  assert not [d for d in os.listdir(teacher_dir) if d.endswith(".run")]
  loaded = teacher_stages.load_teachers(config)
  teacher_stages.precompute(config, loaded)
  stamp = os.path.getmtime(tmp_path / "cache")
  teacher_stages.precompute(config, loaded)
  assert "teacher cache already present" in capsys.readouterr().out
  assert os.path.getmtime(tmp_path / "cache") == stamp
