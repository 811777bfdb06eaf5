"""Per-method settings shared by the digits and CIFAR-100 configs (see docs/methods.md)."""

from __future__ import annotations

import ml_collections

# method -> overrides applied on top of config_base (reference run scripts; our choices marked).
METHOD_SETTINGS: dict[str, dict] = {
    "none": {},
    "kd": {"kd.beta": 0.0},
    "aver": {"kd.beta": 0.0},
    "ebkd": {"kd.beta": 0.0},
    "aekd": {"kd.beta": 0.0, "aekd.c": 0.6},
    "camkd": {"kd.beta": 50.0},
    "fitnet": {"kd.beta": 100.0, "feature_layer": 2},
    "amtml": {},                       # its own temperature/alpha live in config.amtml
    "bomd": {"kd.beta": 10.0},         # our choice: the paper's value was not retrievable
    "mmkd": {"kd.beta": 100.0},
}


# (dataset, method) -> overrides on top of METHOD_SETTINGS, for settings chosen per dataset.
DATASET_SETTINGS: dict[tuple[str, str], dict] = {
    # Selected on a validation split of digits (train[:85%] / train[85%:], 3 seeds, 15 epochs),
    # never on the test split: beta 0 / 10 / 100 gave 92.59 / 94.44 / 92.28% (AVER 93.67%);
    # experiments/RESULTS.md. CIFAR keeps the reference's 100.
    ("digits", "mmkd"): {"kd.beta": 10.0},
}


def apply_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """The method's preset (and its per-dataset choice, if any) on ``config``."""
  config.method = method
  settings = {**METHOD_SETTINGS[method], **DATASET_SETTINGS.get((config.dataset, method), {})}
  for key, value in settings.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config
