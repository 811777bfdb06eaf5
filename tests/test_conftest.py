"""tests/conftest.py: in CI a missing folder of reference vectors fails the suite instead of
skipping the parity tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.claim(29)
def test_missing_reference_vectors_fail_in_ci_and_skip_elsewhere(tmp_path):
  def run(ci):
    env = dict(os.environ, MMKD_TESTVECTORS=str(tmp_path / "nowhere"))
    env.pop("CI", None)
    env.update({"CI": "true"} if ci else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           "tests/verify/test_verify.py::test_passes_on_reference_file"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  ci, local = run(True), run(False)
  assert ci.returncode != 0 and "reference test vectors not found" in ci.stdout, ci.stdout[-2000:]
  assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]
