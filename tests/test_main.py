"""Every shipped config loads, validates and names its expected command."""

from __future__ import annotations

import glob
import os

import pytest
from ml_collections import config_flags

from mmkd_jax import main as cli

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


def _load(path, arg=None):
  return config_flags.config_flags._LoadConfigModule(os.path.basename(path), path).get_config(arg)  # pylint: disable=protected-access


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_loads_and_validates(path):
  config = _load(path)
  cli.validate(config)
  with open(path) as f:
    header = f.read()
  assert "python -m mmkd_jax.main --config configs/" + os.path.basename(path) in header
  smoke = _load(path, "smoke")
  cli.validate(smoke)
  assert smoke.epochs <= 2


def test_cache_dir_depends_on_what_the_cache_holds(tmp_path):
  from mmkd_jax.data.teacher_cache import CacheSpec  # pylint: disable=import-outside-toplevel
  config = _load(CONFIGS[-1])
  config.teacher_dir = str(tmp_path)
  spec = CacheSpec(("a",), ("f",), "digits", "train", 10, 0, 2, "feat[-2]", 10, ((8, 8, 64),))
  other = CacheSpec(("a",), ("g",), "digits", "train", 10, 0, 2, "feat[-2]", 10, ((8, 8, 64),))
  assert cli.cache_dir(config, spec) != cli.cache_dir(config, other)
  assert cli.cache_dir(config, spec).startswith(str(tmp_path))
