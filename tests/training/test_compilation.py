"""The persistent compilation cache: where it goes, and that a command with a warm cache loads
every compiled step (no new entry, the entries read) and computes the same numbers."""

import json
import os
import subprocess
import sys

from helpers import ROOT, save_random_digits_teachers
from mmkd_jax.training import compilation

DIGITS = os.path.join(ROOT, "configs", "digits.py")


def test_the_cache_directory_is_per_machine_and_can_be_moved_or_turned_off(tmp_path):
  key = compilation.machine_key()
  assert key == compilation.machine_key() and key.count("-") >= 1
  home = {"HOME": str(tmp_path)}
  assert compilation.cache_directory(home) == os.path.join(str(tmp_path), ".cache", "mmkd_jax", "xla", key)
  assert compilation.cache_directory({**home, "XDG_CACHE_HOME": "/c"}) == os.path.join("/c", "mmkd_jax", "xla", key)
  assert compilation.cache_directory({**home, compilation.ENV: "/shared/xla"}) == os.path.join("/shared/xla", key)
  assert compilation.cache_directory({**home, compilation.ENV: "gs://b/xla"}) == f"gs://b/xla/{key}"
  for off in ("off", "OFF", "0", "none"):
    assert compilation.cache_directory({**home, compilation.ENV: off}) is None
  # set through JAX itself: used as it is
  assert compilation.cache_directory({**home, "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"


def _entries(directory):
  return sorted(name for name in os.listdir(directory) if name.endswith("-cache"))


def _access_times(directory):
  return {name: os.path.getmtime(os.path.join(directory, name))
          for name in os.listdir(directory) if name.endswith("-atime")}


def test_a_second_command_loads_every_compiled_step_and_computes_the_same_numbers(tmp_path):
  """Two identical digits MMKD smoke commands (teachers online) sharing a fresh cache: the first
  writes its training and meta steps; the second compiles neither again (no new entry of them)
  and reads every entry the first wrote (JAX stamps an entry's access time on each read), and
  its metrics equal the first's. With the cache off the cache is not touched. (Small helpers
  that compile in about a second, JAX's threshold, may or may not be written on a busy machine.)"""
  teachers = save_random_digits_teachers(str(tmp_path / "teachers"))
  cache = tmp_path / "xla"
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"), **{compilation.ENV: str(cache)})
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.pop("XLA_FLAGS", None)

  def cli(name, environ, *flags):
    done = subprocess.run([sys.executable, "-m", "mmkd_jax.main", "--config", f"{DIGITS}:mmkd,smoke", "--workdir",
                           str(tmp_path / name), f"--config.teacher_dir={teachers}", "--config.teacher_source=online",
                           "--config.epochs=1", *flags], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / name / "metrics.jsonl") as f:
      return [{k: v for k, v in json.loads(line).items() if not any(t in k for t in ("time", "per_s", "seconds"))}
              for line in f]

  first = cli("first", env)
  directory = os.path.join(str(cache), compilation.machine_key())
  steps = [name for name in _entries(directory) if name.startswith(("jit_train_step-", "jit_meta_step-"))]
  assert len(steps) == 2, _entries(directory)
  stamped = _access_times(directory)
  second = cli("second", env)
  assert [name for name in _entries(directory) if name.startswith(("jit_train_step-", "jit_meta_step-"))] == steps
  restamped = _access_times(directory)
  assert all(restamped[name] > stamped[name] for name in stamped), (stamped, restamped)
  assert second == first
  entries = _entries(directory)
  # AVER: a training step that is not in the cache yet (no meta step to compile: a third of the time)
  cli("off", dict(env, **{compilation.ENV: "off"}), "--config.method=aver")
  assert _entries(directory) == entries and _access_times(directory) == restamped
