"""Data parallelism: 8 devices reproduce 1 device; 2 processes reproduce 1 process with 4 devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mmkd_jax.data import sources

WORKER = os.path.join(os.path.dirname(__file__), "parallel_worker.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  sources.prepare("digits", path)
  return path


def _run(*args, timeout=900):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(proc, timeout=900):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]
  return out


def _max_relative_difference(a, b, prefix):
  worst = 0.0
  for k in a.files:
    if k.startswith(prefix):
      x, y = a[k].astype(np.float64), b[k].astype(np.float64)
      worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)))
  return worst


def test_eight_devices_reproduce_one_device_with_sync_batchnorm(tmp_path, data_dir):
  one, eight = tmp_path / "one.npz", tmp_path / "eight.npz"
  _wait(_run("steps", one, data_dir, 1, 1))
  _wait(_run("steps", eight, data_dir, 8, 1))
  a, b = np.load(one), np.load(eight)
  assert int(a["devices"]) == 1 and int(b["devices"]) == 8
  assert len(a["meta_losses"]) == 2
  np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)
  np.testing.assert_allclose(b["meta_losses"], a["meta_losses"], rtol=1e-5)
  for prefix in ("params", "meta", "stats"):
    diff = _max_relative_difference(b, a, prefix)
    print(f"8 vs 1 devices, max relative difference of {prefix}: {diff:.2e}")
    assert diff < 1e-4, (prefix, diff)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_reproduce_one_process_and_restore_in_one(tmp_path, data_dir):
  single = tmp_path / "single.npz"
  _wait(_run("train", single, data_dir, 4, tmp_path / "w1"))
  port = _free_port()
  workdir = tmp_path / "w2"
  procs = [_run("train", tmp_path / f"multi{p}.npz", data_dir, 2, workdir, port, p, 2) for p in range(2)]
  for p in procs:
    _wait(p)
  a, b = np.load(single), np.load(tmp_path / "multi0.npz")
  assert int(b["processes"]) == 2 and int(a["step"]) == int(b["step"]) == 10
  for prefix in ("params", "meta"):
    diff = _max_relative_difference(b, a, prefix)
    print(f"2 processes x 2 devices vs 1 process x 4 devices, {prefix}: {diff:.2e}")
    assert diff < 1e-4, (prefix, diff)
  restored = tmp_path / "restored.npz"
  _wait(_run("restore", restored, data_dir, 1, workdir))
  r = np.load(restored)
  assert int(r["step"]) == 10
  assert _max_relative_difference(r, b, "params") == 0.0
