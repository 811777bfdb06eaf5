"""mmkd_jax.training.dispatch and mmkd_jax.data.resident: training on device-resident data, several steps
per dispatch, gives the streamed run's states and metrics bit for bit (cached teachers with two
replays, and MMKD's meta steps with online teachers); a run stopped inside a dispatch resumes
under the other placement to the same end; auto streams when the memory plan does not fit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mmkd_jax.training import run as run_lib
from mmkd_jax import config as config_lib
from mmkd_jax.training import dispatch
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.data import resident, sources

from helpers import metric_records, state_leaves, trainer_config


def _config(teacher_dir, data_dir, **overrides):
  """4 batches of 16 per epoch, 2 cache replays, evaluation on 40 images (the last batch padded),
  the fixture's teachers."""
  config = trainer_config(teacher_dir, data_dir, batch_size=16, eval_batch_size=16, train_split="train[:64]",
                          eval_split="test[:40]", num_replays=2, log_every=3, **overrides)
  for entry in config.teachers:
    entry.checkpoint = os.path.join(teacher_dir, f"digits_{entry.name}")
  return config


def _train(config, workdir, quiet=True):
  config = config_lib.validate(config)
  loaded = teacher_stages.load_teachers(config)
  if config.teacher_source == "precomputed":
    teacher_stages.precompute(config, loaded, sources.open_dataset(config))
  return run_lib.train_and_evaluate(config, workdir, loaded, teacher_stages.open_cache(config, loaded), quiet=quiet)


def _assert_same_run(reference, summary, workdir):
  for a, b in zip(state_leaves(reference["state"]), state_leaves(summary["state"])):
    np.testing.assert_array_equal(a, b)
  assert summary["final_top1"] == reference["final_top1"]
  assert metric_records(workdir) == reference["records"]


def _reference(config, workdir):
  summary = _train(config, workdir)
  summary["records"] = metric_records(workdir)
  return summary


@pytest.mark.claim(44, 45, 46, 57)
def test_cached_teachers_on_the_device_equal_streaming_bit_for_bit(tmp_path, teacher_dir, data_dir, monkeypatch,
                                                                    capsys):
  """AVER from a two-replay cache over 2 epochs: device-resident with 1 and 3 steps per dispatch
  equals the streamed run; a device run stopped at step 6 (inside a 3-step dispatch of epoch 2)
  resumes under auto placement, which streams here (a 1 KB budget) and says why, to the same end."""
  c = lambda **o: _config(teacher_dir, data_dir, method="aver", teacher_source="precomputed", epochs=2,
                          cache_dir=str(tmp_path / "cache"), **o)
  reference = _reference(c(), str(tmp_path / "host"))
  assert reference["data_placement"] == "host"
  for steps in (1, 3):
    workdir = str(tmp_path / f"device{steps}")
    device = _train(c(data_placement="device", scan_steps=steps), workdir)
    assert device["data_placement"] == "device"  # no silent fallback to streaming
    _assert_same_run(reference, device, workdir)
  stopped = _train(c(data_placement="device", scan_steps=3, stop_at_step=6), str(tmp_path / "resumed"))
  assert stopped["status"] == "preempted" and int(np.asarray(stopped["state"].step)) == 6
  assert stopped["data_placement"] == "device" and stopped["steps_trained"] == 6
  monkeypatch.setattr(resident, "device_budget", lambda: (1024, "a test's budget"))
  resumed = _train(c(data_placement="auto", scan_steps=3), str(tmp_path / "resumed"), quiet=False)
  assert "data_placement=auto: streaming from the host: the data need" in capsys.readouterr().out
  assert resumed["data_placement"] == "host"
  assert resumed["resumed_from_step"] == 6 and resumed["steps_trained"] == 2  # 2 epochs of 4 steps
  _assert_same_run(reference, resumed, str(tmp_path / "resumed"))


@pytest.mark.claim(57)
def test_meta_steps_inside_a_dispatch_equal_streaming_bit_for_bit(tmp_path, teacher_dir, data_dir):
  """MMKD with online teachers, a meta step after batches 0, 2 and 3: 2 steps per dispatch hold
  the patterns (meta, -) and (meta, meta)."""
  c = lambda **o: _config(teacher_dir, data_dir, method="mmkd", **{"meta.freq": 2, "mmkd.buffer_size": 16,
                                                                   "meta.lookahead_matching_steps": 1}, **o)
  reference = _reference(c(), str(tmp_path / "host"))
  assert any("train/meta_outer_loss" in r for r in reference["records"])
  workdir = str(tmp_path / "device")
  device = _train(c(data_placement="device", scan_steps=2), workdir)
  assert device["data_placement"] == "device"
  _assert_same_run(reference, device, workdir)


@pytest.mark.slow
def test_bfloat16_steps_on_the_device_equal_streaming_bit_for_bit(tmp_path, teacher_dir, data_dir):
  """config.dtype=bfloat16 (AVER, online teachers in bfloat16 too), 3 steps per dispatch."""
  c = lambda **o: _config(teacher_dir, data_dir, method="aver", dtype="bfloat16", **o)
  reference = _reference(c(), str(tmp_path / "host"))
  workdir = str(tmp_path / "device")
  _assert_same_run(reference, _train(c(data_placement="device", scan_steps=3), workdir), workdir)


@pytest.mark.claim(57)
def test_replicas_on_the_device_equal_streaming_bit_for_bit(tmp_path, teacher_dir, data_dir):
  """Two seeds stacked, each gathering its own data order from one copy of the data."""
  def run(name, **o):
    config = config_lib.validate(_config(teacher_dir, data_dir, method="aver", replicas="0,1", **o))
    loaded = teacher_stages.load_teachers(config)
    return run_lib.train_members(config, str(tmp_path / name), loaded, None, quiet=True)
  reference, device = run("host"), run("device", data_placement="device", scan_steps=3)
  assert {r["data_placement"] for r in reference["summaries"]} == {"host"}
  assert {r["data_placement"] for r in device["summaries"]} == {"device"}
  for a, b in zip(state_leaves(reference["state"]), state_leaves(device["state"])):
    np.testing.assert_array_equal(a, b)
  for seed in ("seed0", "seed1"):
    assert metric_records(str(tmp_path / "host" / seed)) == metric_records(str(tmp_path / "device" / seed))
  a, b = (metric_records(str(tmp_path / "host" / seed)) for seed in ("seed0", "seed1"))
  assert a != b  # two data orders, two runs


class _Setup:
  def __init__(self, steps_per_epoch, stop_at_step=-1, scan_steps=4):
    self.steps_per_epoch = steps_per_epoch
    self.config = config_lib.base_config()
    self.config.stop_at_step, self.config.scan_steps = stop_at_step, scan_steps


@pytest.mark.parametrize("position, epoch, stop, expected", [
    (0, 0, -1, 4), (4, 0, -1, 8), (8, 0, -1, 10), (5, 0, -1, 8),   # multiples of 4, the epoch's end, a resume
    (4, 0, 7, 7), (4, 1, 17, 7), (7, 0, 7, 8), (0, 1, 7, 4)])       # stop_at_step inside, or elsewhere
def test_a_dispatch_ends_at_multiples_of_its_length_the_epoch_end_and_the_stop_step(position, epoch, stop, expected):
  scanned = dispatch.Scanned.__new__(dispatch.Scanned)
  scanned.setup, scanned.length = _Setup(10, stop), 4
  assert scanned.boundary(epoch, position) == expected


def test_the_memory_plan_counts_images_and_one_replay_twice_while_swapping():
  plan = resident.MemoryPlan(images=3_000, teacher_per_replay=1_000, replays=2, temporaries=None, budget=10_000,
                             budget_source="test")
  assert plan.resident == 5_000 and plan.fits()
  plan.temporaries = 2_600
  assert plan.total == 7_600 and not plan.fits()  # over 75 % of the budget
  assert resident.MemoryPlan(3_000, 1_000, 1, 0, 10_000, "test").resident == 4_000
  assert "step temporaries and outputs 0.000 GiB" in plan.describe() and "of 0.0 GiB test" in plan.describe()


@pytest.mark.claim(44)
def test_device_placement_of_variable_size_images_is_refused_naming_the_fix():
  spec = sources.DatasetSpec("dogs", 120, (64, 64, 3), (0.5,) * 3, (0.2,) * 3, host_transform=True)
  config = config_lib.base_config()
  config.dataset, config.data_placement = "stanford_dogs", "device"
  with pytest.raises(config_lib.ConfigError, match="data_placement: device is not possible.*use host or auto"):
    resident.check_placement(config, spec)
  config.data_placement = "auto"
  resident.check_placement(config, spec)  # auto streams such a dataset instead
