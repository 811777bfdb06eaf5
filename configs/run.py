"""A run's own ``config.json`` as a config: ``--config <workdir>/config.json`` (main finds this
file for any ``.json`` path), e.g. to resume or evaluate a run from the config it recorded.

    python -m mmkd_jax.main --config runs/digits/config.json --workdir runs/digits
"""

from mmkd_jax import config as config_lib
from mmkd_jax.runs import storage


def get_config(arg: str | None = None):
  if not arg:
    raise ValueError("configs/run.py takes the path of a run's config.json: --config runs/x/config.json")
  return config_lib.from_json(storage.read_json(arg))
