"""MMKD on the offline digits dataset: the embedded default (no network, CPU, minutes).

    python -m mmkd_jax.main --config configs/digits_mmkd.py --workdir runs/digits

``pipeline`` mode trains the three teachers if they are missing (resnet14, resnet20, wrn_16_1,
into runs/teachers, 15 epochs each), precomputes their outputs for 4 augmentation replays, and
distils a resnet8 student with MMKD (meta-weighted KD + feature matching with beta 10, chosen
on a validation split; hard buffer; exact hypergradient) for 15 epochs. Measured on a 2-core CPU: see experiments/RESULTS.md (accuracy,
mean +- std over seeds, and runtime).

``get_config('smoke')`` is a tiny variant for tests (2 epochs, small teachers).
"""

from mmkd_jax.config_digits import digits_config


def get_config(arg: str | None = None):
  return digits_config("mmkd", arg)
