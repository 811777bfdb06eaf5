"""mmkd_jax.loop, the one epoch loop, through the trainer on digits: a stop mid-epoch resumes to
the uninterrupted run bit for bit (state and every logged record), SIGTERM checkpoints and stops,
a non-finite term stops the run within two log windows naming it, and the meta-step schedule and
warm-up of a bi-level method."""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax import teachers as teachers_lib
from mmkd_jax import train
from mmkd_jax.loop import NonFiniteLossError
from mmkd_jax.models import get_model

from helpers import digits_teacher_record, metric_records, run_trainer, state_leaves, trainer_config


@pytest.mark.parametrize("method", ["aver", pytest.param("mmkd", marks=pytest.mark.slow)])
def test_resume_after_a_stop_gives_identical_state_and_metrics(tmp_path, teacher_dir, data_dir, method):
  """Stopped at step 8 (mid-epoch, mid-window) and resumed: the state, the summary and every
  logged record equal the uninterrupted run's (MMKD in the default suite: tests/test_kill.py)."""
  config = trainer_config(teacher_dir, data_dir, method=method, epochs=2, log_every=3)
  straight = run_trainer(config, str(tmp_path / "straight"))
  assert straight["status"] == "finished" and os.path.exists(tmp_path / "straight" / "summary.json")
  killed = run_trainer(trainer_config(teacher_dir, data_dir, method=method, epochs=2, log_every=3, stop_at_step=8),
                str(tmp_path / "resumed"))
  assert killed["status"] == "preempted"
  assert int(jax.device_get(killed["state"].step)) == 8
  resumed = run_trainer(config, str(tmp_path / "resumed"))
  assert resumed["status"] == "finished"
  for a, b in zip(state_leaves(straight["state"]), state_leaves(resumed["state"])):
    np.testing.assert_array_equal(a, b)
  assert resumed["final_top1"] == straight["final_top1"]
  records = metric_records(str(tmp_path / "straight"))
  assert metric_records(str(tmp_path / "resumed")) == records
  steps = [r["step"] for r in records if "train/loss" in r and "epoch" not in r]
  assert steps == [3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43]  # windows of 3, per epoch of 22 steps

def test_the_mmkd_loop_takes_meta_steps_on_the_reference_schedule(tmp_path, teacher_dir, data_dir):
  """Every meta.freq batches and on the loader's last batch when the split divides into whole
  batches: 10 batches of 16 with freq 4 -> meta steps after batches 1, 5, 9 and 10."""
  config = trainer_config(teacher_dir, data_dir, method="mmkd", batch_size=16, eval_batch_size=16,
                   train_split="train[:160]", log_every=1, **{"meta.freq": 4, "mmkd.buffer_size": 16,
                                                              "meta.lookahead_matching_steps": 1})
  for entry in config.teachers:  # the full-split teachers of the fixture, named explicitly
    entry.checkpoint = os.path.join(teacher_dir, f"digits_{entry.name}")
  run_trainer(config, str(tmp_path / "w"))
  records = [r for r in metric_records(str(tmp_path / "w")) if "train/loss" in r and "epoch" not in r]
  assert [r["step"] for r in records] == list(range(1, 11))
  assert [r["step"] for r in records if "train/meta_outer_loss" in r] == [1, 5, 9, 10]
  # Per-class mean teacher weights are logged each epoch: (classes, teachers), rows on the simplex.
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f if "teacher_weights/per_class" in line]
  per_class = np.array(records[-1]["teacher_weights/per_class"], float)
  assert per_class.shape == (10, 2)
  np.testing.assert_allclose(per_class.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(per_class.mean(axis=0) @ [1, 1], 1.0, rtol=1e-5)

def test_evaluations_every_n_epochs_log_each_configured_evaluator(tmp_path, teacher_dir, data_dir):
  """eval_every=2 over 3 epochs evaluates after epochs 2 and 3 only (the best is chosen among
  them); each evaluator's metrics reach metrics.jsonl under the split's name."""
  config = trainer_config(teacher_dir, data_dir, method="aver", batch_size=16, eval_batch_size=16,
                          train_split="train[:64]", epochs=3, eval_every=2,
                          evaluators=("accuracy", "per_class", "calibration", "teachers"))
  for entry in config.teachers:  # the full-split teachers of the fixture, named explicitly
    entry.checkpoint = os.path.join(teacher_dir, f"digits_{entry.name}")
  summary = run_trainer(config, str(tmp_path / "w"))
  epochs = {r["epoch"]: r for r in metric_records(str(tmp_path / "w")) if "epoch" in r}
  assert sorted(epochs) == [1, 2, 3] and "test/top1" not in epochs[1] and "train/loss" in epochs[1]
  for epoch in (2, 3):
    record = epochs[epoch]
    assert {"test/top1", "test/top5", "test/loss", "test/ece", "test/per_class_top1/0", "test/agreement/s_resnet8a",
            "test/kl/s_resnet8b", "test/teacher/ensemble"} <= set(record)
    assert 0.0 <= record["test/ece"] <= 1.0
  assert summary["final_top1"] == epochs[3]["test/top1"] and summary["best_epoch"] in (2, 3)


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, teacher_dir, data_dir, monkeypatch):
  calls = {"n": 0}
  original = train.parallel.shard_batch

  def shard_and_maybe_terminate(batch, mesh, *args):
    calls["n"] += 1
    if calls["n"] == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(batch, mesh, *args)

  monkeypatch.setattr(train.parallel, "shard_batch", shard_and_maybe_terminate)
  summary = run_trainer(trainer_config(teacher_dir, data_dir, method="aver"), str(tmp_path / "w"))
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
    run_trainer(trainer_config(broken, data_dir, method="aver"), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints") or not os.listdir(tmp_path / "w" / "checkpoints")

@pytest.mark.slow
def test_warmup_epochs_use_uniform_weights_and_no_meta_steps(tmp_path, teacher_dir, data_dir):
  run_trainer(trainer_config(teacher_dir, data_dir, method="mmkd", epochs=2, **{"meta.warmup_epochs": 1}), str(tmp_path / "w"))
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    epochs = [json.loads(line) for line in f if '"epoch"' in line]
  assert "train/meta_outer_loss" not in epochs[0] and "train/meta_outer_loss" in epochs[1]
  np.testing.assert_allclose(epochs[0]["teacher_weights/logits/s_resnet8a"], 0.5, rtol=1e-6)
  assert abs(epochs[1]["teacher_weights/logits/s_resnet8a"] - 0.5) > 1e-6

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
    run_trainer(trainer_config(broken, data_dir, method="aver", log_every=2), str(tmp_path / "w"))
  assert seen["batches"] <= 1 + 3 * 2  # the example batch, then at most three log windows


def test_a_compilation_is_announced_once_before_the_first_call(capsys):
  from mmkd_jax import loop  # pylint: disable=import-outside-toplevel
  calls = []
  step = loop.announced(lambda x: calls.append(x) or x, "the training step", quiet=False)
  assert step(1) == 1 and step(2) == 2 and calls == [1, 2]
  assert capsys.readouterr().out == "compiling the training step (once per run) ...\n"
  loop.announced(lambda x: x, "the meta step", quiet=True)(1)
  assert capsys.readouterr().out == ""
