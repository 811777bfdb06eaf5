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
    pytest.skip(f"reference test vectors not found at {path} (set MMKD_TESTVECTORS)")
  return path
