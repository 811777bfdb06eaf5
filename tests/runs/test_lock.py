"""The work-directory lock, local (flock) and on a bucket (a lock object with generation
preconditions), against a local GCS server for the latter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mmkd_jax.runs import storage
from mmkd_jax.runs import lock as workdir_lock

from helpers import ROOT

_HOLD = ("import sys, time\nfrom mmkd_jax.runs import lock as workdir_lock\n"
         "with workdir_lock.WorkdirLock(sys.argv[1]):\n  print('held', flush=True); time.sleep(60)")


def _holder(workdir: str, env: dict | None = None) -> subprocess.Popen:
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))
  assert holder.stdout.readline().strip() == "held"
  return holder


def test_lock_is_released_with_its_holder(tmp_path):
  """Another process's lock refuses this one; the holder's death releases it. Within a process the
  lock is re-entrant (the command holds it, the student stage takes it again)."""
  holder = _holder(str(tmp_path))
  with pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by pid {holder.pid}"):
    workdir_lock.WorkdirLock(str(tmp_path)).__enter__()
  holder.kill()
  holder.wait()
  with workdir_lock.WorkdirLock(str(tmp_path)):
    with workdir_lock.WorkdirLock(str(tmp_path)):
      pass


def test_bucket_lock_refuses_a_second_holder_and_is_deleted_on_release(gcs):
  workdir = gcs.new_bucket("lock") + "/runs/a"
  lock_object = storage.join(workdir, ".lock")
  holder = _holder(workdir, gcs.env)
  recorded = storage.read_json(lock_object)
  assert recorded["pid"] == holder.pid
  with pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by pid {holder.pid}"):
    workdir_lock.WorkdirLock(workdir).__enter__()
  holder.terminate()  # SIGTERM: the with-block does not exit, the lock object stays ...
  holder.wait()
  assert storage.exists(lock_object)
  with workdir_lock.WorkdirLock(workdir):  # ... and is taken over: its holder on this host is dead
    assert storage.read_json(lock_object)["pid"] != holder.pid
    with workdir_lock.WorkdirLock(workdir):  # re-entrant
      pass
    assert storage.exists(lock_object)
  assert not storage.exists(lock_object)  # released: deleted


def test_bucket_lock_of_another_host_waits_until_it_is_stale(gcs):
  """A live holder on another host is refused; once its refreshes stopped STALE_S ago it is taken over."""
  workdir = gcs.new_bucket("lock") + "/w"
  lock_object = storage.join(workdir, ".lock")
  storage.write_json(lock_object, {"pid": 1, "host": "another-host", "since": "then", "refreshed": time.time()})
  with pytest.raises(workdir_lock.WorkdirLockedError, match="in use by pid 1 on another-host"):
    workdir_lock.WorkdirLock(workdir).__enter__()
  storage.write_json(lock_object, {"pid": 1, "host": "another-host", "since": "then",
                                   "refreshed": time.time() - workdir_lock.STALE_S - 1})
  with workdir_lock.WorkdirLock(workdir):
    assert storage.read_json(lock_object)["host"] != "another-host"


def test_bucket_lock_is_refreshed_while_held(gcs, monkeypatch):
  monkeypatch.setattr(workdir_lock, "REFRESH_S", 0.2)
  workdir = gcs.new_bucket("lock") + "/w"
  with workdir_lock.WorkdirLock(workdir):
    first = json.loads(storage.read_text(storage.join(workdir, ".lock")))["refreshed"]
    time.sleep(1.0)
    later = json.loads(storage.read_text(storage.join(workdir, ".lock")))["refreshed"]
  assert later > first


_TWO_PROCESSES = """
import sys
import jax
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[3]))
from mmkd_jax.runs import lock as workdir_lock
try:
  with workdir_lock.WorkdirLock(sys.argv[1]):
    print("held")
except workdir_lock.WorkdirLockedError as e:
  print("refused:", e)
"""


def test_a_refusal_on_process_0_stops_every_process(tmp_path):
  """On several hosts only process 0 locks; its answer is broadcast, so a busy work directory
  stops every process at once instead of leaving the others waiting at a barrier."""
  holder = _holder(str(tmp_path))

  def processes():
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESSES, str(tmp_path), str(port), str(p)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in range(2)]
    return [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
  refused = processes()
  assert refused[0].startswith(f"refused: {tmp_path} is in use by pid {holder.pid}"), refused
  assert refused[1].startswith("refused:") and "process 0 could not lock it" in refused[1], refused
  holder.kill()
  holder.wait()
  assert processes() == ["held", "held"]
