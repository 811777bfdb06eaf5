"""mode=show_config: every field with its value, default and description."""

from __future__ import annotations

from mmkd_jax import config as config_lib
from mmkd_jax import show_config

from helpers import DIGITS


def test_show_config_describes_every_field():
  text = show_config.describe(config_lib.load(DIGITS))
  lines = text.splitlines()
  assert len(lines) > 80 and all("default" in line for line in lines)
  weights = next(line for line in lines if line.startswith("weights.feat "))
  assert "10.0" in weights and "<method default>" in weights  # the digits preset, and where it comes from
  assert any(line.startswith("lr ") and "# student SGD learning rate" in line for line in lines)
