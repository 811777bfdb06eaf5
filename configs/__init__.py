"""The configs shipped with mmkd_jax (installed as ``mmkd_jax.configs``): ``--config mmkd_jax:configs/digits.py`` or ``--config digits``."""
