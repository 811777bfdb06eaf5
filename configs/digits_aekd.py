"""AEKD: min-norm weights of the teachers' logit gradients (cap C = 0.6), on digits (resnet8 <- resnet14, resnet20, wrn_16_1).

    python -m mmkd_jax.main --config configs/digits_aekd.py --workdir runs/digits_aekd

Teachers and cache are shared with every digits config (trained/precomputed when missing).
Expected accuracy and runtime on a 2-core CPU: experiments/RESULTS.md (digits table).
"""

from mmkd_jax.config_digits import digits_config


def get_config(arg: str | None = None):
  return digits_config("aekd", arg)
