"""mode=show_config: every field with its value, default and description."""

from __future__ import annotations

from mmkd_jax import config as config_lib
from mmkd_jax.config import show as show_config

from helpers import DIGITS


def test_show_config_describes_every_field():
  text = show_config.describe(config_lib.load(DIGITS))
  lines = text.splitlines()
  assert len(lines) > 80 and all("default" in line for line in lines)
  weights = next(line for line in lines if line.startswith("weights.feat "))
  assert "10.0" in weights and "<method default>" in weights  # the digits preset, and where it comes from
  assert any(line.startswith("lr ") and "# student SGD learning rate" in line for line in lines)


def test_a_description_spanning_several_comment_lines_is_shown_whole():
  from mmkd_jax.config import show as show_config  # pylint: disable=import-outside-toplevel
  notes = show_config._field_comments()  # pylint: disable=protected-access
  assert notes["adapter_init"].endswith("'torch' (the originals: PyTorch's default U(+-1/sqrt(fan_in)) for weight and bias).")
  assert notes["student_checkpoint"].endswith('instead of a random initialisation; "" = random.')
  assert notes["evaluators"].endswith("| per_class | calibration (ECE) | teachers")
  assert notes["epochs"] == "student epochs"  # a field's own trailing comment
