"""BOMD-like: orthogonal teacher-to-student projections, bi-level teacher weights, on digits (resnet8 <- resnet14, resnet20, wrn_16_1).

    python -m mmkd_jax.main --config configs/digits_bomd.py --workdir runs/digits_bomd

Teachers and cache are shared with every digits config (trained/precomputed when missing).
Expected accuracy and runtime on a 2-core CPU: experiments/RESULTS.md (digits table).
"""

from mmkd_jax.config_digits import digits_config


def get_config(arg: str | None = None):
  return digits_config("bomd", arg)
