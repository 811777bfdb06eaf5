"""Orbax checkpoints: round trip; a corrupt latest checkpoint falls back to the previous one, is
moved aside (not deleted) and is saved anew when training reaches that step again."""

from __future__ import annotations

import glob
import os

import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax.runs import checkpoint


def _state(v):
  return {"w": jnp.full((3,), float(v)), "step": jnp.asarray(v, jnp.int32)}


def test_round_trip_and_best(tmp_path):
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=True)
  ckpt.save(1, _state(1), {"best_top1": 10.0}, is_best=True)
  ckpt.save(2, _state(2), {"best_top1": 10.0})
  ckpt.wait()
  state, host, step = ckpt.restore(_state(0))
  assert step == 2 and host["best_top1"] == 10.0
  np.testing.assert_array_equal(state["w"], [2.0, 2.0, 2.0])
  state, _, step = ckpt.restore(_state(0), "best")
  assert step == 1
  ckpt.close()


@pytest.mark.claim(18)
def test_corrupt_latest_falls_back_with_a_message(tmp_path, capsys):
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=False)
  ckpt.save(1, _state(1), {})
  ckpt.save(2, _state(2), {})
  ckpt.close()
  damaged = 0
  for path in glob.glob(str(tmp_path / "checkpoints" / "2" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
      damaged += 1
  assert damaged
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=False)
  state, _, step = ckpt.restore(_state(0))
  assert step == 1
  np.testing.assert_array_equal(state["w"], [1.0, 1.0, 1.0])
  assert "checkpoint step 2" in capsys.readouterr().out
  # The damaged step is kept aside, and a new save of step 2 is not skipped (it used to be: the
  # corrupt step stayed and every later restore fell back again).
  assert len(os.listdir(tmp_path / "corrupt")) == 1
  ckpt.save(2, _state(22), {})
  ckpt.close()
  state, _, step = checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=False).restore(_state(0))
  assert step == 2
  np.testing.assert_array_equal(state["w"], [22.0, 22.0, 22.0])


@pytest.mark.claim(19)
def test_all_corrupt_is_a_clear_error(tmp_path):
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=False)
  ckpt.save(1, _state(1), {})
  ckpt.close()
  for path in glob.glob(str(tmp_path / "checkpoints" / "1" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint.*moved aside, not deleted"):
    checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=False).restore(_state(0))


def test_no_checkpoint_returns_none(tmp_path):
  assert checkpoint.Checkpoints(str(tmp_path)).restore(_state(0)) is None


def test_async_save_keeps_the_host_state_as_it_was_when_saved(tmp_path):
  """Orbax writes the JSON item in a background thread; the loop changes its host dict right after
  save (pops the mid-epoch metric carry, appends history), and the checkpoint must not see that."""
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=2, async_save=True)
  host = {"history": [{"epoch": 1}], "carry": {"sums": {"loss": [1.5]}}}
  ckpt.save(3, _state(3), host, force=True)
  host.pop("carry")
  host["history"].append({"epoch": 2})
  ckpt.wait()
  _, restored, step = ckpt.restore(_state(0))
  assert step == 3
  assert restored == {"history": [{"epoch": 1}], "carry": {"sums": {"loss": [1.5]}}}
  ckpt.close()
