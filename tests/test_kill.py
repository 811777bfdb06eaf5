"""Real kills: SIGTERM and SIGKILL at every stage of a pipeline in the default suite (with every path on a
bucket of a local GCS server, against the same pipeline on local disk); the slow
variant SIGKILLs at six points of a pipeline run (teacher training, precompute, mid-epoch
before any checkpoint, during an asynchronous checkpoint write, mid-epoch after an epoch boundary,
right after a completed checkpoint), each followed by the same command; the final student, the
teachers and the metrics equal an uninterrupted run bit for bit (CPU, precomputed teacher cache)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mmkd_jax.runs import storage

from helpers import DIGITS, ROOT, files_below

KILLS = [("teacher_step", 5), ("precompute", 3), ("step", 10), ("async_save", 1), ("step", 8), ("after_epoch", 1)]


def _env(tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"), PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  return env


def _args(tmp_path, name):
  return ["--config", f"{DIGITS}:smoke", "--workdir", str(tmp_path / name / "run"),
          f"--config.teacher_dir={tmp_path / name / 'teachers'}", "--config.epochs=3", "--config.lr_milestones=(2,)"]


def _final_state(workdir, which="checkpoints"):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  workdir = str(workdir)
  steps = sorted(int(d) for d in storage.listdir(storage.join(workdir, which)) if d.isdigit())
  tree = ocp.PyTreeCheckpointer().restore(storage.join(workdir, which, str(steps[-1]), "state"))
  import jax  # pylint: disable=import-outside-toplevel
  return steps[-1], {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fingerprints(teacher_dir):
  out = {}
  for name in storage.listdir(str(teacher_dir)):
    meta = storage.join(str(teacher_dir), name, "teacher.json")
    if storage.is_file(meta):
      out[name] = storage.read_json(meta)["fingerprint"]
  return out


def _metrics(workdir):
  """metrics.jsonl without what differs between runs by nature (wall time, throughput)."""
  lines = storage.read_text(storage.join(str(workdir), "metrics.jsonl")).splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in ("time", "train/images_per_s")} for line in lines]


def _assert_same_student_run(reference, other, final_step):
  """The student run in ``other`` ends where ``reference`` does, bit for bit: final state (at
  ``final_step``), every metric record and the summary's results; returns ``other``'s summary."""
  step_a, a = _final_state(reference)
  step_b, b = _final_state(other)
  assert step_a == step_b == final_step and a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert _metrics(reference) == _metrics(other)
  summaries = [storage.read_json(storage.join(str(d), "summary.json")) for d in (reference, other)]
  for field in ("final_top1", "best_top1", "best_epoch", "teacher_accuracy", "epochs_completed"):
    assert summaries[0][field] == summaries[1][field], field
  return summaries[1]


@pytest.mark.claim(25, "sigkill")
@pytest.mark.slow
def test_sigkill_at_six_points_then_resume_is_bit_identical(tmp_path):
  env = _env(tmp_path)
  reference = subprocess.run([sys.executable, "-m", "mmkd_jax.main", *_args(tmp_path, "ref")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=1200)
  assert reference.returncode == 0, reference.stderr[-3000:]
  for point, n in KILLS:
    killed = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kill_worker.py"), point, str(n), "--",
                             *_args(tmp_path, "killed")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-3000:])
  final = subprocess.run([sys.executable, "-m", "mmkd_jax.main", *_args(tmp_path, "killed")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
  assert final.returncode == 0, final.stderr[-3000:]
  assert _fingerprints(tmp_path / "killed" / "teachers") == _fingerprints(tmp_path / "ref" / "teachers")
  _assert_same_student_run(tmp_path / "ref" / "run", tmp_path / "killed" / "run", 66)


# SIGTERM (the preemption notice) and SIGKILL at each stage of one pipeline, one after the other
# on the same command: each SIGTERM must end the command with exit 0 and one line saying where it
# stopped; the last run finishes; teachers, cache, final state and metrics equal the reference's.
CHAIN = [("term:teacher_step", 5, 0), ("teacher_step", 6, -signal.SIGKILL), ("term:precompute", 2, 0),
         ("precompute", 2, -signal.SIGKILL), ("term:step", 6, 0), ("step", 30, -signal.SIGKILL)]


def _cache_records(teacher_dir):
  from mmkd_jax.teachers import cache  # pylint: disable=import-outside-toplevel
  cache_root = storage.join(str(teacher_dir), "cache")
  (directory,) = [storage.join(cache_root, d) for d in storage.listdir(cache_root)]
  out = {}
  for shard, meta in cache._complete_shards(directory):  # pylint: disable=protected-access
    source = cache.TeacherOutputs(spec=cache.shard_spec(meta), data_dir=shard, index_range=tuple(meta["index_range"]),
                                  file_format="array_record").as_data_source(split="train")
    for i in range(len(source)):
      record = source[i]
      out[(int(record["index"]), int(record["replay"]))] = {k: np.asarray(v) for k, v in record.items()}
  return storage.basename(directory), out


@pytest.mark.claim(24, 48, 25, 42, 49, "sigterm", "sigkill", "resume")
def test_sigterm_and_sigkill_at_every_stage_on_a_bucket_resume_to_the_local_run(tmp_path, gcs, uninterrupted):
  """The pipeline with every path on gs:// (a local GCS server), run from an empty directory with
  its own TMPDIR (a pod host shares no disk), interrupted at every stage by the CHAIN, ends where
  the same pipeline on local disk does: teachers, cache, student, metrics; then mode=evaluate,
  mode=export to the bucket and load_student from it agree with the local run's."""
  reference, env, _ = uninterrupted  # the same pipeline on local disk
  bucket = gcs.new_bucket("pipeline")
  host = tmp_path / "host"  # the bucket run's working directory and TMPDIR: must stay empty
  host.mkdir()
  bucket_env = dict(env, **gcs.env, TMPDIR=str(host))
  bucket_env.pop("TFDS_DATA_DIR")
  where = {"ref": (str(reference), [], env, ROOT),
           "stopped": (bucket + "/stopped", [f"--config.data_dir={bucket}/tfds"], bucket_env, str(host))}

  def command(name, *extra, worker=()):
    root, data, run_env, cwd = where[name]
    args = ["--config", f"{DIGITS}:smoke", "--workdir", storage.join(root, "run"),
            f"--config.teacher_dir={storage.join(root, 'teachers')}", *data, *extra]
    program = [os.path.join(ROOT, "tests", "kill_worker.py"), *worker, "--"] if worker else ["-m", "mmkd_jax.main"]
    return subprocess.run([sys.executable, *program, *args], cwd=cwd, env=run_env, capture_output=True, text=True,
                          timeout=1200)
  for point, n, code in CHAIN:
    done = command("stopped", worker=(point, str(n)))
    assert done.returncode == code, (point, done.returncode, done.stderr[-3000:])
    if code == 0:
      stage = {"teacher_step": "while training teacher", "precompute": "while precomputing",
               "step": "while training the student at step"}[point.split(":")[1]]
      lines = [line for line in done.stdout.splitlines() if line.startswith("stopped by SIGTERM")]
      assert len(lines) == 1 and stage in lines[0] and "run the same command to resume" in lines[0], done.stdout[-2000:]
      assert "Traceback" not in done.stderr
  final = command("stopped")
  assert final.returncode == 0, final.stderr[-3000:]
  teachers = storage.join(where["stopped"][0], "teachers")
  assert _fingerprints(teachers) == _fingerprints(reference / "teachers") and len(_fingerprints(teachers)) == 2
  key_a, records_a = _cache_records(reference / "teachers")
  key_b, records_b = _cache_records(teachers)
  assert key_a == key_b and records_a.keys() == records_b.keys()
  for k, record in records_a.items():
    for field, value in record.items():
      np.testing.assert_array_equal(value, records_b[k][field], err_msg=f"{k} {field}")
  stopped = _assert_same_student_run(reference / "run", storage.join(where["stopped"][0], "run"), 44)
  assert all(stopped["stage_seconds"][s] > 0 for s in ("teacher_training", "precompute", "student"))
  for name in where:
    for mode in ("evaluate", "export"):
      done = command(name, f"--config.mode={mode}", f"--config.export_dir={storage.join(where[name][0], 'export')}")
      assert done.returncode == 0, (name, mode, done.stderr[-3000:])
  evaluations = [storage.read_json(storage.join(where[name][0], "run", "evaluation.json")) for name in where]
  assert evaluations[0] == evaluations[1]
  import mmkd_jax  # pylint: disable=import-outside-toplevel
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  logits = {form: [mmkd_jax.load_student(storage.join(where[name][0], *path)).logits(images) for name in where]
            for form, path in (("export", ("export",)), ("npz", ("export", "student.npz")), ("run", ("run",)))}
  for form, (local, remote) in logits.items():
    np.testing.assert_array_equal(local, remote, err_msg=form)
  assert files_below(host) == []  # nothing of the bucket run on the host's disk



@pytest.mark.claim(46)
@pytest.mark.slow  # ~5 min; the default suite stops inside a dispatch with stop_at_step (test_dispatch.py)
def test_sigterm_and_sigkill_inside_device_dispatches_resume_to_the_streamed_run(tmp_path):
  """Device-resident data, 3 steps per dispatch: SIGTERM after the 4th dispatch, SIGKILL after the
  9th of the resumed command, then the same command to the end; the student equals the
  uninterrupted host-streamed run bit for bit (MMKD, meta steps inside the dispatches)."""
  env = dict(_env(tmp_path), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

  def args(name, *extra):
    return ["--config", f"{DIGITS}:smoke", "--workdir", str(tmp_path / name / "run"),
            f"--config.teacher_dir={tmp_path / 'teachers'}", "--config.epochs=3", "--config.lr_milestones=(2,)", *extra]
  device = ("--config.data_placement=device", "--config.scan_steps=3")
  reference = subprocess.run([sys.executable, "-m", "mmkd_jax.main", *args("ref")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=1800)
  assert reference.returncode == 0, reference.stderr[-3000:]
  for point, n, code in (("term:dispatch", 4, 0), ("dispatch", 9, -signal.SIGKILL)):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kill_worker.py"), point, str(n), "--",
                           *args("stopped", *device)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == code, (point, done.returncode, done.stderr[-3000:])
    if code == 0:
      lines = [line for line in done.stdout.splitlines() if line.startswith("stopped by SIGTERM")]
      assert len(lines) == 1 and "while training the student at step 12" in lines[0], done.stdout[-2000:]
  final = subprocess.run([sys.executable, "-m", "mmkd_jax.main", *args("stopped", *device)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
  assert final.returncode == 0, final.stderr[-3000:]
  _assert_same_student_run(tmp_path / "ref" / "run", tmp_path / "stopped" / "run", 66)


# ---------------------------------------------------------------------------------------------
# Real signals at random moments: SIGTERM and Ctrl-C (SIGINT) sent by another thread at a random
# time into a stage (teacher training, precompute, the student), measured from the line that
# starts the stage; the same command after each; everything equals the uninterrupted run.

STAGE_STARTS = {"teacher": r"^\[teacher 1/", "precompute": r"^\[precompute\] ",
                "student": r"^teachers \(test top-1\)"}
STAGE_ENDS = {"teacher": r"^teacher 's_resnet8b': ", "precompute": r"^teacher cache written", "student": r"^written to "}
STOP_LINE = re.compile(r"^stopped by (SIGTERM|Ctrl-C) (while training teacher|while precomputing|while training the "
                       r"student at step|before |after )")


def _pipeline_args(root):
  return ["--config", f"{DIGITS}:smoke", "--workdir", str(root / "run"), f"--config.teacher_dir={root / 'teachers'}"]


def _timed_run(args, env, trigger=None, delay=0.0, signals=()):
  """Runs the CLI; ``delay`` seconds after the first stdout line matching ``trigger`` sends each of
  ``signals`` (0.3 s apart). Returns (exit code, stdout, stderr, line times, the signals sent)."""
  proc = subprocess.Popen([sys.executable, "-m", "mmkd_jax.main", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  errors, sent, times, out = [], [], [], []
  reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()))
  reader.start()

  def send():
    for k, signum in enumerate(signals):
      if proc.poll() is None:
        proc.send_signal(signum)
        sent.append(signum)
      if k + 1 < len(signals):
        time.sleep(0.3)
  timer, start = None, time.monotonic()
  for line in proc.stdout:
    out.append(line)
    times.append((time.monotonic() - start, line))
    if timer is None and trigger and re.search(trigger, line):
      timer = threading.Timer(delay, send)
      timer.start()
  proc.wait(timeout=1200)
  reader.join()
  if timer is not None:
    timer.join()
  return proc.returncode, "".join(out), errors[0], times, sent


def _stage_seconds(times):
  """Each stage's duration in a run's line times (from its start line to its end line)."""
  def at(pattern):
    return next(t for t, line in times if re.search(pattern, line))
  return {stage: at(STAGE_ENDS[stage]) - at(STAGE_STARTS[stage]) for stage in STAGE_STARTS}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The digits smoke pipeline run without interruption (local disk), with its stages' durations
  as a command with a warm compilation cache sees them: the interrupted commands' cache is warm."""
  root = tmp_path_factory.mktemp("uninterrupted")
  env = dict(_env(root), JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  for run_root in (root / "cold", root):
    code, _, err, times, _ = _timed_run(_pipeline_args(run_root), env)
    assert code == 0, err[-3000:]
  return root, env, _stage_seconds(times)


def _records_without_timing(path):
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "train/images_per_s")} for line in f]


def _assert_everything_equal(reference, other):
  """Teachers (weights and every record of their training runs), the student's final and best
  states, every record and the summary: equal to the uninterrupted run's."""
  assert _fingerprints(other / "teachers") == _fingerprints(reference / "teachers")
  runs = sorted(d for d in os.listdir(reference / "teachers") if d.endswith(".run"))
  assert runs == sorted(d for d in os.listdir(other / "teachers") if d.endswith(".run")) and len(runs) == 2
  for name in runs:
    assert (_records_without_timing(other / "teachers" / name / "metrics.jsonl")
            == _records_without_timing(reference / "teachers" / name / "metrics.jsonl")), name
  _assert_same_student_run(reference / "run", other / "run", 44)
  assert os.listdir(reference / "run" / "best") == os.listdir(other / "run" / "best")
  best = [_final_state(d / "run", "best") for d in (reference, other)]  # the best/ directory's one step
  for key in best[0][1]:
    np.testing.assert_array_equal(best[0][1][key], best[1][1][key], err_msg=f"best {key}")
  summaries = [storage.read_json(str(d / "run" / "summary.json")) for d in (reference, other)]
  timing = ("wall_seconds", "stage_seconds", "resumed_from_step", "steps_trained")
  for summary in summaries:  # where the run lies differs by construction
    summary["member"] = {k: v for k, v in summary["member"].items() if k != "workdir"}
  assert {k: v for k, v in summaries[0].items() if k not in timing} == {k: v for k, v in summaries[1].items()
                                                                       if k not in timing}


def _interrupt_at_random_moments(uninterrupted, tmp_path, draws, seed):
  """Runs the pipeline command under each draw (signals, stage, the share of the stage's duration
  within which they are sent), then to the end; returns what each command reported."""
  reference, env, stage_seconds = uninterrupted
  rng = random.Random(seed)
  seen = []
  for signals, stage, share in draws:
    delay = rng.uniform(0.0, share * stage_seconds[stage])
    code, out, err, _, sent = _timed_run(_pipeline_args(tmp_path), env, STAGE_STARTS[stage], delay, signals)
    note = f"seed {seed}: {[signal.Signals(s).name for s in signals]} {delay:.2f} s into {stage}"
    assert "Traceback" not in err, (note, err[-3000:])
    stops = [line for line in out.splitlines() if line.startswith("stopped by")]
    if not sent or code == 0 and not stops:  # the stage was done already, or the command finished first
      assert code == 0 and not stops, (note, code, err[-3000:])
      seen.append((note, "finished"))
      continue
    if sent == [signal.SIGINT, signal.SIGINT]:  # the second Ctrl-C aborts at once
      assert code == 130 and "aborted by Ctrl-C" in err, (note, code, err[-3000:])
      seen.append((note, "aborted"))
      continue
    assert code == (130 if sent[0] == signal.SIGINT else 0), (note, code, err[-3000:])
    assert len(stops) == 1 and STOP_LINE.match(stops[0]) and stops[0].endswith("run the same command to resume"), \
        (note, out[-2000:])
    assert ("Ctrl-C" in stops[0]) == (sent[0] == signal.SIGINT), stops[0]
    seen.append((note, stops[0]))
  code, out, err, _, _ = _timed_run(_pipeline_args(tmp_path), env)
  assert code == 0, err[-3000:]
  _assert_everything_equal(reference, tmp_path)
  return seen


@pytest.mark.claim(24, 53, 55, "sigterm", "random-signals", "ctrl-c")
def test_sigterm_and_ctrl_c_at_random_moments_of_every_stage_lose_nothing(uninterrupted, tmp_path):
  """One draw per stage in the default suite (SIGTERM, Ctrl-C, SIGTERM), then the same command:
  teachers, their training records, the student's states, records, best/ and summary equal the
  uninterrupted run's; each stop printed one line naming the signal and the stage."""
  seed = int.from_bytes(os.urandom(4), "little")
  # (signals, stage, the share of the stage's duration the delay is drawn from): the first stop
  # in the student leaves room for the second
  draws = [((signal.SIGTERM,), "teacher", 1.0), ((signal.SIGINT,), "precompute", 1.0),
           ((signal.SIGTERM,), "student", 0.45), ((signal.SIGINT,), "student", 0.45)]
  seen = _interrupt_at_random_moments(uninterrupted, tmp_path, draws, seed)
  print("\n".join(f"{note}: {what}" for note, what in seen))


@pytest.mark.claim(24, 53, 55, "random-signals", "ctrl-c")
@pytest.mark.slow
def test_many_random_signals_and_a_double_ctrl_c_lose_nothing(uninterrupted, tmp_path):
  seed = int.from_bytes(os.urandom(4), "little")
  rng = random.Random(seed + 1)
  draws = [((rng.choice((signal.SIGTERM, signal.SIGINT)),), rng.choice(tuple(STAGE_STARTS)), 0.5) for _ in range(8)]
  draws.insert(4, ((signal.SIGINT, signal.SIGINT), "student", 0.5))
  seen = _interrupt_at_random_moments(uninterrupted, tmp_path, draws, seed)
  print("\n".join(f"{note}: {what}" for note, what in seen))
