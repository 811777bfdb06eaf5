"""Metric logs: windows and epoch means carried over a mid-epoch stop equal an uninterrupted
epoch's bit for bit; a resumed log holds each step once, with wall-clock times."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmkd_jax.runs import storage
from mmkd_jax.runs.metrics import MetricWriter, StepLog, mean_metrics


def _steps(n: int):
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    m = {"loss": np.float32(rng.standard_normal()), "vec": rng.standard_normal(3).astype(np.float32)}
    if i % 5 == 0:  # a meta-step term, present on some steps only
      m["hypergrad_norm"] = np.float32(rng.random())
    out.append(m)
  return out


def _run(steps, window, first=0, carry=None, stop_after=None):
  log = StepLog(window, first, carry)
  windows = []
  for idx in range(first, len(steps)):
    windows += log.add(idx, steps[idx])
    if idx == stop_after:
      windows += log.flush()
      return windows, json.loads(json.dumps(log.carry(idx)))  # through JSON, as in a checkpoint
  windows += log.flush()
  return windows, log.epoch_means()


@pytest.mark.claim(42)
def test_a_stop_mid_window_resumes_to_identical_windows_and_epoch_means():
  steps = _steps(23)
  whole, means = _run(steps, 4)
  assert [idx for idx, _ in whole] == [3, 7, 11, 15, 19]  # window ends, aligned to the epoch's start
  for stop_after in (2, 6, 9, 11, 13):
    before, carry = _run(steps, 4, stop_after=stop_after)
    after, resumed_means = _run(steps, 4, first=stop_after + 1, carry=carry)
    assert [i for i, _ in before + after] == [i for i, _ in whole], stop_after
    for (_, a), (_, b) in zip(before + after, whole):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{stop_after} {k}")
    for k in means:
      np.testing.assert_array_equal(resumed_means[k], means[k], err_msg=f"{stop_after} {k}")
  # two stops inside one window (steps 8..11): the second carries the first's sums on
  first, carry = _run(steps, 4, stop_after=8)
  second, carry = _run(steps, 4, first=9, carry=carry, stop_after=10)
  third, resumed_means = _run(steps, 4, first=11, carry=carry)
  chained = first + second + third
  assert [i for i, _ in chained] == [i for i, _ in whole]
  for (_, a), (_, b) in zip(chained, whole):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for k in means:
    np.testing.assert_array_equal(resumed_means[k], means[k], err_msg=k)


@pytest.mark.claim(42)
def test_epoch_means_count_each_term_over_the_steps_that_have_it():
  steps = _steps(10)
  means = mean_metrics(steps)
  assert means["hypergrad_norm"] == np.mean([np.float64(s["hypergrad_norm"]) for s in steps if "hypergrad_norm" in s])
  np.testing.assert_allclose(means["loss"], np.mean([np.float64(s["loss"]) for s in steps]), rtol=1e-15)


@pytest.mark.claim(42)
def test_a_resumed_writer_drops_the_records_after_its_checkpoint(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in (0, 10, 20, 30):
    writer.write(step, {"train/loss": float(step)})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "train/lo')  # the torn last line of a killed writer
  writer = MetricWriter(str(tmp_path), resume_step=20)
  writer.write(30, {"train/loss": 30.5})
  writer.close()
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [0, 10, 20, 30] and records[-1]["train/loss"] == 30.5
  assert all(isinstance(r["time"], float) and r["time"] > 1.7e9 for r in records)
  MetricWriter(str(tmp_path), resume_step=-1).close()  # a fresh start: the log starts empty
  assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_tensorboard_reads_the_scalars_and_vectors_the_writer_logs(tmp_path):
  """TensorBoard (the plots extra, installed by requirements.txt) shows every scalar, and a
  vector as one curve per entry; a NaN entry (a class absent from the split) is left out."""
  accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  writer = MetricWriter(str(tmp_path))
  writer.write(5, {"train/loss": 1.5, "test/per_class_top1": np.array([50.0, np.nan, 100.0])})
  writer.write(10, {"train/loss": 1.25})
  writer.close()
  events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(5, 1.5), (10, 1.25)]
  assert set(events.Tags()["scalars"]) == {"train/loss", "test/per_class_top1/0", "test/per_class_top1/2"}
  with open(tmp_path / "metrics.jsonl") as f:
    first = json.loads(f.readline())
  assert first["test/per_class_top1/0"] == 50.0 and "test/per_class_top1/1" not in first


@pytest.mark.claim(42)
def test_on_a_bucket_the_log_is_whole_at_each_flush_and_a_resume_drops_what_followed(gcs, tmp_path):
  """Object stores cannot append: the writer keeps the log and rewrites the object at each flush
  (the loop flushes before every checkpoint), so a kill loses only records after the last one."""
  workdir = gcs.new_bucket("metrics") + "/run"
  path = storage.join(workdir, "metrics.jsonl")
  writer = MetricWriter(workdir)
  for step in (0, 10, 20):
    writer.write(step, {"train/loss": float(step)})
  assert not storage.exists(path)
  writer.flush()
  writer.write(30, {"train/loss": 30.0})  # then killed: never flushed
  writer.tb.close()  # (in a real kill TensorBoard's writer dies too: here it would flush at exit)
  steps = [json.loads(line)["step"] for line in storage.read_text(path).splitlines()]
  assert steps == [0, 10, 20]
  writer = MetricWriter(workdir, resume_step=10)  # the checkpoint it resumes from is step 10
  assert [json.loads(line)["step"] for line in storage.read_text(path).splitlines()] == [0, 10]
  writer.write(20, {"train/loss": 20.5})
  writer.close()
  records = [json.loads(line) for line in storage.read_text(path).splitlines()]
  assert [r["step"] for r in records] == [0, 10, 20] and records[-1]["train/loss"] == 20.5
  accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  for name in storage.listdir(storage.join(workdir, "tensorboard")):  # TensorBoard's events, on the bucket too
    (tmp_path / name).write_bytes(storage.as_path(storage.join(workdir, "tensorboard", name)).read_bytes())
  events = accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  assert (20, 20.5) in [(e.step, e.value) for e in events.Scalars("train/loss")]
