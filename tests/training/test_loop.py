"""mmkd_jax.training.loop, the one epoch loop, through the trainer on digits: a stop mid-epoch resumes to
the uninterrupted run bit for bit (state and every logged record), SIGTERM checkpoints and stops,
a non-finite term stops the run within two log windows naming it, and the meta-step schedule and
warm-up of a bi-level method."""

from __future__ import annotations

import json
import os
import re
import signal
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmkd_jax import teachers as teachers_lib
from mmkd_jax.training import setup as train
from mmkd_jax.training.loop import Member, NonFiniteLossError
from mmkd_jax.models import get_model

from helpers import digits_teacher_record, metric_records, run_trainer, state_leaves, trainer_config


@pytest.mark.claim(53, 57, "resume")
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
  assert killed["resumed_from_step"] == 0 and killed["steps_trained"] == 8
  # Then a stop on the first epoch's last batch (step 22): the epoch ends first (evaluation, its
  # record, the best checkpoint), so the command that resumes at epoch 2 loses nothing.
  at_end = run_trainer(trainer_config(teacher_dir, data_dir, method=method, epochs=2, log_every=3, stop_at_step=22),
                       str(tmp_path / "resumed"))
  assert at_end["status"] == "preempted" and at_end["resumed_from_step"] == 8 and at_end["steps_trained"] == 14
  assert [r["epoch"] for r in metric_records(str(tmp_path / "resumed")) if "test/top1" in r] == [1]
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["22", "8"]
  resumed = run_trainer(config, str(tmp_path / "resumed"))
  assert resumed["status"] == "finished"
  # the path taken: restored at step 22, trained the other 22 (a restore that silently returned
  # nothing would retrain all 44 from step 0 and end in the same state)
  assert resumed["resumed_from_step"] == 22 and resumed["steps_trained"] == 22
  for a, b in zip(state_leaves(straight["state"]), state_leaves(resumed["state"])):
    np.testing.assert_array_equal(a, b)
  assert resumed["final_top1"] == straight["final_top1"]
  records = metric_records(str(tmp_path / "straight"))
  assert metric_records(str(tmp_path / "resumed")) == records
  steps = [r["step"] for r in records if "train/loss" in r and "epoch" not in r]
  assert steps == [3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43]  # windows of 3, per epoch of 22 steps

@pytest.mark.claim("meta-schedule")
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


@pytest.mark.claim(53)
def test_a_sigterm_during_an_evaluation_keeps_that_epoch_and_stops_before_the_next(tmp_path, teacher_dir, data_dir,
                                                                                   monkeypatch):
  """A real SIGTERM while epoch 1 of 2 is evaluated: the epoch's record and best checkpoint are
  written, the command stops at step 22 without starting epoch 2, and resumes there."""
  from mmkd_jax.evaluation import evaluate as evaluation  # pylint: disable=import-outside-toplevel
  original = evaluation.evaluate_student

  def evaluate_and_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

  monkeypatch.setattr(evaluation, "evaluate_student", evaluate_and_signal)
  stopped = run_trainer(trainer_config(teacher_dir, data_dir, method="aver", epochs=2), str(tmp_path / "w"))
  assert stopped["status"] == "preempted" and stopped["steps_trained"] == 22
  assert [r["epoch"] for r in metric_records(str(tmp_path / "w")) if "test/top1" in r] == [1]
  assert os.listdir(tmp_path / "w" / "best") == ["22"] and os.listdir(tmp_path / "w" / "checkpoints") == ["22"]
  monkeypatch.setattr(evaluation, "evaluate_student", original)
  resumed = run_trainer(trainer_config(teacher_dir, data_dir, method="aver", epochs=2), str(tmp_path / "w"))
  assert resumed["status"] == "finished" and resumed["resumed_from_step"] == 22 and resumed["epochs_completed"] == 2


@pytest.mark.claim(54, "stop-latency")
def test_the_host_runs_at_most_max_in_flight_dispatches_ahead_of_the_device(tmp_path, teacher_dir, data_dir,
                                                                           monkeypatch):
  """Each step's loss passes through a slow device computation (the device is the bottleneck, as
  with a CIFAR-size step): when each step is dispatched, at most MAX_IN_FLIGHT earlier ones may be
  unfinished, so a stop request lands within that many steps. Unbounded, the host queued most of
  the epoch before the device finished its first steps."""
  from mmkd_jax.training import loop  # pylint: disable=import-outside-toplevel
  slow = jax.jit(lambda loss: loss + 0.0 * jnp.sum(jax.lax.fori_loop(
      0, 40, lambda i, m: jnp.tanh(m @ m), jnp.full((384, 384), loss / 384))))
  unfinished, losses = [], []
  original = loop.Program.step

  def step(self, fn, raw, epoch):
    unfinished.append(sum(not x.is_ready() for x in losses))
    metrics = original(self, fn, raw, epoch)
    metrics["loss"] = slow(metrics["loss"])
    losses.append(metrics["loss"])
    return metrics

  monkeypatch.setattr(loop.Program, "step", step)
  run_trainer(trainer_config(teacher_dir, data_dir, method="aver", log_every=100), str(tmp_path / "w"))
  assert len(unfinished) == 22 and max(unfinished) <= 2 == loop.MAX_IN_FLIGHT, unfinished


@pytest.mark.claim(24)
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

@pytest.mark.claim(23)
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

@pytest.mark.claim("meta-schedule")
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
  from mmkd_jax.runs import progress  # pylint: disable=import-outside-toplevel
  calls = []
  step = progress.announced(lambda x: calls.append(x) or x, "the training step", quiet=False)
  assert step(1) == 1 and step(2) == 2 and calls == [1, 2]
  assert capsys.readouterr().out == "compiling the training step (once per run) ...\n"
  progress.announced(lambda x: x, "the meta step", quiet=True)(1)
  assert capsys.readouterr().out == ""


def _divergence_member(factor: float = 10.0) -> Member:
  """A Member with only what the divergence check reads: MMKD's terms, their weights, 10 steps an
  epoch."""
  config = ml_collections.ConfigDict({"divergence_factor": factor, "lr": 0.05,
                                      "weights": {"ce": 1.0, "kd": 1.0, "feat": 100.0}})
  setup = types.SimpleNamespace(config=config, steps_per_epoch=10,
                                method_spec=types.SimpleNamespace(terms=("ce", "kd", "feat")))
  return Member(setup=setup, workdir="", quiet=True, state=None, host={}, ckpt=None, writer=None, eval_fn=None)


@pytest.mark.claim(56, "divergence")
def test_terms_are_measured_from_the_first_step_and_late_ones_from_their_first_window():
  """Hand-made losses. A run that blows up inside its first window (kd 1 at step 1, the window's
  mean 50: weighted above the whole first loss 3.5) stops at its first logged window; without a
  first step on record (a checkpoint written before it was kept) that window becomes the
  reference instead and a later window 11x above it stops the run. With it, 9x over the first
  step is no divergence and 11x is, also after a resume (the host read back from JSON); a term
  that is zero at step 1 is measured from its first non-zero window, and stops the run only once
  its weighted value exceeds the loss of that window."""
  step1 = {"loss": 3.5, "loss_ce": 2.5, "loss_kd": 1.0, "loss_feat": 0.0}
  window = {"loss": 52.5, "loss_ce": 2.5, "loss_kd": 50.0, "loss_feat": 0.0}
  member = _divergence_member()
  member.note_first_step(step1)
  message = member.check_divergence(4, window)
  assert message.startswith("loss term 'kd' grew from 1 (its first step, step 1) to 50 at step 4 (epoch 1), over 10x")
  assert "config.weights.ce (now 1: 71% of the loss at its first step) and config.lr (now 0.05)" in message

  unrecorded = _divergence_member()
  assert unrecorded.check_divergence(4, window) is None
  assert unrecorded.host["loss_reference"] == {"loss": [52.5, 4], "ce": [2.5, 4], "kd": [50.0, 4]}
  assert unrecorded.check_divergence(8, {"loss": 502.5, "loss_ce": 2.5, "loss_kd": 500.0, "loss_feat": 0.0}) is None
  message = unrecorded.check_divergence(12, {"loss": 552.5, "loss_ce": 2.5, "loss_kd": 550.0, "loss_feat": 0.0})
  assert message.startswith("loss term 'kd' grew from 50 (its first logged window, step 4) to 550 at step 12")

  growing = _divergence_member()
  growing.note_first_step(step1)
  assert growing.check_divergence(4, {"loss": 11.5, "loss_ce": 2.5, "loss_kd": 9.0, "loss_feat": 0.0}) is None
  resumed = _divergence_member()
  resumed.host = json.loads(json.dumps(growing.host))
  assert resumed.host["first_step_reference"] == {"loss": [3.5, 1], "ce": [2.5, 1], "kd": [1.0, 1]}
  message = resumed.check_divergence(8, {"loss": 13.5, "loss_ce": 2.5, "loss_kd": 11.0, "loss_feat": 0.0})
  assert message.startswith("loss term 'kd' grew from 1 (its first step, step 1) to 11 at step 8 (epoch 1)")
  late = _divergence_member()
  late.note_first_step(step1)
  assert late.check_divergence(4, {"loss": 5.5, "loss_ce": 2.5, "loss_kd": 3.0, "loss_feat": 0.0}) is None
  # feat starts at 1e-4 (window 16) and grows 500x: weighted 5 < the first window's loss 5.5
  assert late.check_divergence(16, {"loss": 5.51, "loss_ce": 2.5, "loss_kd": 3.0, "loss_feat": 1e-4}) is None
  assert late.check_divergence(20, {"loss": 10.5, "loss_ce": 2.5, "loss_kd": 3.0, "loss_feat": 0.05}) is None
  message = late.check_divergence(24, {"loss": 11.5, "loss_ce": 2.5, "loss_kd": 3.0, "loss_feat": 0.06})
  assert message.startswith("loss term 'feat' grew from 0.0001 (its first logged window, step 16) to 0.06 at step 24")
  assert _divergence_member(factor=0).check_divergence(4, window) is None


@pytest.mark.claim(56, "divergence")
def test_a_diverging_loss_stops_the_run_naming_the_term_and_the_knob(tmp_path):
  """MMKD with its preset feature weight (100) on a user's small CNN without BatchNorm before its
  features (tests/plugin): the loss grows by orders of magnitude within the first epoch. The real
  CLI stops with one line naming the term, the knob that sets the loss's scale and the switch,
  exit 2; with the switch off the run goes on; as a replica, only that replica stops. Logged every
  4 steps (the plugin's config): this run's kd term grows from 3.5 at step 1 to 1947 by step 6, a
  window mean of 211 over its first 4 steps and 930 over the next (AMD EPYC VM, 2026-12-07), so
  only the first step, not the first window, is a reference it crosses 10x of."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from helpers import ROOT  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"))
  env.pop("XLA_FLAGS", None)

  def cli(name, *flags):
    return subprocess.run([sys.executable, "-m", "mmkd_jax.main", "--config", os.path.join(ROOT, "tests", "plugin", "my_config.py"),
                           "--workdir", str(tmp_path / name), f"--config.teacher_dir={tmp_path / 'teachers'}",
                           "--config.method=mmkd", "--config.mmkd.buffer_size=32", "--config.epochs=2",
                           *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  done = cli("diverged")
  assert done.returncode == 2, done.stderr[-3000:]
  (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  # which term crosses first ('ce' on the CI machine, 'kd' on an AMD EPYC VM) is the CPU's rounding
  assert re.match(r"error: loss term '(ce|kd|feat)' grew from", line) and "config.weights.feat (now 100" in line, line
  assert "--config.divergence_factor=0 turns this check off" in line and "Traceback" not in done.stderr
  assert not os.path.exists(tmp_path / "diverged" / "summary.json")
  done = cli("unchecked", "--config.divergence_factor=0")
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "unchecked" / "summary.json") as f:
    assert json.load(f)["status"] == "finished"
  done = cli("replicas", "--config.replicas=0:weights.feat=100,0:weights.feat=1")
  assert done.returncode == 0, done.stderr[-3000:]
  statuses = {}
  for name in ("seed0_weights.feat=100", "seed0_weights.feat=1"):
    with open(tmp_path / "replicas" / name / "summary.json") as f:
      statuses[name] = json.load(f)["status"]
  assert statuses == {"seed0_weights.feat=100": "diverged", "seed0_weights.feat=1": "finished"}
  assert re.search(r"replica 0 \(seed0_weights.feat=100\): loss term '(ce|kd|feat)' grew from", done.stdout)
