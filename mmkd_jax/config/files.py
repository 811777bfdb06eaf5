"""Config files and what a run recorded: a file's ``get_config(arg)`` with ``--config.<field>``
overrides (``load``), its ``arg`` grammar (``parse_arg``), and a run's ``config.json`` as a config
to run again (``from_json``)."""

from __future__ import annotations

import os
import types
from typing import Any, Iterable, Mapping, Sequence

import ml_collections
from ml_collections.config_flags import config_flags as flags_impl

from mmkd_jax import registry
from mmkd_jax.config.base import base_config, teacher
from mmkd_jax.config.fields import set_fields, upgrade_stored
from mmkd_jax.errors import ConfigError


def parse_arg(arg: str | None, positional: Sequence[str] = (), defaults: Mapping[str, str] | None = None,
              choices: Mapping[str, Iterable[str]] | None = None, switches: Sequence[str] = ("smoke",)
              ) -> types.SimpleNamespace:
  """``get_config(arg)`` arguments, big_vision style: ``"vgg8,vgg13,aver"`` (positional, in
  order), ``"student=vgg8,method=aver"``, and switches such as ``"smoke"``, comma-separated.
  Anything unknown is a ConfigError listing what is valid."""
  values = dict(defaults or {})
  values.update({s: False for s in switches})
  choices = {k: tuple(v) for k, v in (choices or {}).items()}
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  slots = iter(positional)
  for part in parts:
    if part in switches:
      values[part] = True
      continue
    key, value = part.split("=", 1) if "=" in part else (next(slots, None), part)
    if key is None or key not in positional:
      raise ConfigError(f"config argument {part!r} is not understood; valid: "
                        f"{', '.join(f'{p}=...' for p in positional)}{', ' if positional else ''}"
                        f"switches {', '.join(switches) or '(none)'}")
    if key in choices and value not in choices[key]:
      raise ConfigError(f"config argument {key}={value!r} is unknown; valid: {', '.join(choices[key])}")
    values[key] = value
  return types.SimpleNamespace(**values)


def load(path: str, arg: str | None = None, overrides: Mapping[str, Any] | Iterable[str] = ()
         ) -> ml_collections.ConfigDict:
  """A config file's ``get_config(arg)`` with overrides, as ``--config path:arg --config.k=v``."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  module = flags_impl._LoadConfigModule(os.path.splitext(os.path.basename(path))[0], path)  # pylint: disable=protected-access
  return set_fields(module.get_config() if arg is None else module.get_config(arg), overrides)


def from_json(stored: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The config a run's ``config.json`` records, as a config to run again (``--config
  <workdir>/config.json``): every field as stored, resolved again (to the same values)."""
  stored = upgrade_stored(stored)
  registry.import_plugins(stored.get("imports", ()))
  c = base_config()
  _assign(c, stored)
  c.resolved_for = ""
  return c


def _assign(target: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
  for key, value in values.items():
    if key not in target:  # a plug-in method's own section
      target[key] = ml_collections.ConfigDict(value) if isinstance(value, Mapping) else value
    elif key == "teachers":
      target[key] = [teacher(**entry) for entry in value]
    elif isinstance(target[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
      _assign(target[key], value)
    elif isinstance(value, list):
      target[key] = tuple(value)
    else:
      target[key] = value
