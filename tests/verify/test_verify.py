"""The `python -m mmkd_jax.verify models` command on good, corrupted and renamed files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mmkd_jax import verify


@pytest.mark.claim("parity")
def test_passes_on_reference_file(testvectors, capsys):
  assert verify.main(["models", str(testvectors / "models" / "resnet8.npz")]) == 0
  out = capsys.readouterr().out
  assert "OK   resnet8" in out and "1 passed, 0 failed" in out


@pytest.mark.claim("parity")
def test_recipe_is_deterministic(testvectors):
  with np.load(testvectors / "models" / "resnet8.npz") as f:
    npz = {k: f[k] for k in f.files}
  a = verify.recipe_state_dict(npz)
  keys = [str(k) for k in npz["keys"]]
  # Every kind of tensor, against values computed here from the documented recipe.
  expected = np.random.default_rng([0, 0]).standard_normal((16, 3, 3, 3)) / np.sqrt(27)  # key 0: conv1.weight
  np.testing.assert_array_equal(a["conv1.weight"], expected.astype(np.float32))
  i = keys.index("bn1.weight")
  np.testing.assert_array_equal(a["bn1.weight"], (1 + 0.1 * np.random.default_rng([0, i]).standard_normal(16)).astype(np.float32))
  i = keys.index("bn1.bias")
  np.testing.assert_array_equal(a["bn1.bias"], (0.1 * np.random.default_rng([0, i]).standard_normal(16)).astype(np.float32))
  np.testing.assert_array_equal(a["bn1.running_var"], npz["bn_stats/bn1.running_var"])
  assert "bn1.num_batches_tracked" not in a


@pytest.mark.claim("parity")
def test_fails_on_perturbed_output_and_names_it(testvectors, tmp_path, capsys):
  with np.load(testvectors / "models" / "resnet8.npz") as f:
    npz = {k: f[k] for k in f.files}
  npz["feat_2"] = npz["feat_2"] + 1e-2
  path = tmp_path / "resnet8.npz"
  np.savez(path, **npz)
  assert verify.main(["models", str(path)]) == 1
  out = capsys.readouterr().out
  assert "FAIL resnet8" in out and "feat_2: max abs error 1.000e-02" in out


@pytest.mark.claim("parity")
def test_architecture_inferred_from_keys_when_renamed(testvectors, tmp_path):
  path = tmp_path / "my_student.npz"
  shutil.copy(testvectors / "models" / "wrn_16_1.npz", path)
  report = verify.check_model_file(str(path), atol=1e-4)
  assert report.arch == "wrn_16_1" and report.ok


def test_missing_file_fails(tmp_path, capsys):
  assert verify.main(["models", str(tmp_path / "absent.npz")]) == 1
  assert "no such file" in capsys.readouterr().out
