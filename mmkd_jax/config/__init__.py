"""The run's configuration: every field and its default (``base``), config files and recorded
configs (``files``), resolving a method's fields and validating, once per command (``resolve``),
dotted-field setting (``fields``), the grammar of ``config.replicas`` (``replicas``), and
``mode=show_config`` (``show``)."""

from mmkd_jax.config.base import ADAPTER_INITS, FAITHFUL, MODES, base_config, smoke, teacher
from mmkd_jax.config.fields import set_fields, upgrade_stored
from mmkd_jax.config.files import from_json, load, parse_arg
from mmkd_jax.config.resolve import member_configs, require_resolved, resolve, validate
from mmkd_jax.errors import ConfigError

__all__ = ["ADAPTER_INITS", "ConfigError", "FAITHFUL", "MODES", "base_config", "from_json", "load", "member_configs",
           "parse_arg", "require_resolved", "resolve", "set_fields", "smoke", "teacher", "upgrade_stored", "validate"]
