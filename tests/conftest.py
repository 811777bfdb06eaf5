"""Shared fixtures: where the PyTorch reference vectors live."""

from __future__ import annotations

import os
import pathlib

import pytest

_DEFAULT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "testvectors"


def testvectors_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("MMKD_TESTVECTORS", _DEFAULT))


@pytest.fixture(scope="session")
def testvectors() -> pathlib.Path:
  path = testvectors_dir()
  if not path.is_dir():
    message = f"reference test vectors not found at {path} (set MMKD_TESTVECTORS)"
    if os.environ.get("CI"):  # in CI a missing folder must fail the suite, not skip 40 tests
      pytest.fail(message + "; CI runs with ../shared beside the checkout", pytrace=False)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """Persistent XLA cache: the trainer tests compile the same steps several times."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  yield
