"""Setting the fields of a config: dotted names (``meta.lr``, ``teachers[1].seed``) with values
as the command line writes them, a method's section created when a field of it is first set (a
plug-in's once ``config.imports`` names its module), and the fields renamed since runs were
recorded. ``mmkd_jax.config`` builds on these (and exports them)."""

from __future__ import annotations

import ast
import copy
import difflib
import re
from typing import Any, Iterable, Mapping

import ml_collections
from ml_collections import config_dict

from mmkd_jax import methods, registry
from mmkd_jax.errors import ConfigError


def placeholders(defaults: Mapping[str, Any]) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({k: config_dict.placeholder(type(v) if v is not None else object)
                                    for k, v in defaults.items()})


# Fields renamed since runs were recorded (old dotted name -> new): an older run's config.json
# loads, compares and resumes under the current names.
RENAMED = {"weights.feat_from_epoch": "feat_from_epoch", "mmkd.gram_per_device": "mmkd.gram_per_bn_group"}


# Fields added since runs were recorded whose default is not what those runs did (dotted name ->
# the value every run recorded without it was made with).
ADDED_WITH_NEW_DEFAULT = {"teacher_training.views": "shared"}


def _stored_section(stored: dict, dotted: str) -> tuple[dict | None, str]:
  """(the mapping that holds ``dotted``'s last part, that part); None where a parent is missing."""
  *parents, leaf = dotted.split(".")
  section = stored
  for p in parents:
    section = section.get(p) if isinstance(section, dict) else None
  return (section if isinstance(section, dict) else None), leaf


def upgrade_stored(stored: Mapping[str, Any]) -> dict[str, Any]:
  """A stored config (``config.json``) with renamed fields under their current names, and the
  fields added since with the value the run was made with."""
  out = copy.deepcopy(dict(stored))
  for name, made_with in ADDED_WITH_NEW_DEFAULT.items():
    section, leaf = _stored_section(out, name)
    if section is not None:  # a recorded config has the section; a partial mapping does not
      section.setdefault(leaf, made_with)
  for old, new in RENAMED.items():
    section, old_leaf = _stored_section(out, old)
    if section is None or old_leaf not in section:
      continue
    value = section.pop(old_leaf)
    *new_parents, new_leaf = new.split(".")
    target = out
    for p in new_parents:
      target = target.setdefault(p, {})
    target.setdefault(new_leaf, value)
  return out


def set_fields(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | Iterable[str]
               ) -> ml_collections.ConfigDict:
  """Sets dotted fields: ``{'meta.lr': 1e-4}`` or ``['meta.lr=1e-4', ...]`` (strings are Python
  literals, else taken as text; ``true``/``false`` for a flag). A method's section is created when
  first set (a plug-in's once ``imports`` names its module). Unknown fields raise ConfigError."""
  items = overrides.items() if isinstance(overrides, Mapping) else (s.split("=", 1) for s in overrides)
  for key, value in items:
    if "=" in key or not key:
      raise ConfigError(f"config.{key}: write overrides as FIELD=VALUE")
    if key in RENAMED:
      raise ConfigError(f"config.{key} is now config.{RENAMED[key]}")
    *parents, leaf = key.split(".")
    section = _name_and_index(parents[0])[0] if parents else None
    if section is not None and section not in config:
      _add_method_section(config, section)
    target = config
    for part in parents:
      target = _child(target, part, key)
    if leaf not in target:
      raise ConfigError(f"config.{key}: no such field{_did_you_mean(leaf, target)}")
    try:
      target[leaf] = _parse_value(value, target[leaf], key)
    except TypeError as e:
      raise ConfigError(f"config.{key}: {e}") from e
  return config


def _name_and_index(part: str) -> tuple[str, int | None]:
  """``teachers[1]`` -> ('teachers', 1); ``meta`` -> ('meta', None)."""
  match = re.fullmatch(r"(\w+)\[(\d+)\]", part)
  return (match.group(1), int(match.group(2))) if match else (part, None)


def _child(target: Any, part: str, key: str) -> Any:
  name, index = _name_and_index(part)
  if not isinstance(target, ml_collections.ConfigDict) or name not in target:
    raise ConfigError(f"config.{key}: no such field {name!r}{_did_you_mean(name, target)}")
  child = target[name]
  if index is None:
    return child
  if not isinstance(child, (list, tuple)) or index >= len(child):
    raise ConfigError(f"config.{key}: config.{name} has no entry {index}")
  return child[index]


def _did_you_mean(name: str, target: Any) -> str:
  keys = list(target.keys()) if isinstance(target, ml_collections.ConfigDict) else []
  close = difflib.get_close_matches(name, keys, n=1)
  return f'. Did you mean "{close[0]}"?' if close else ""


def _add_method_section(config: ml_collections.ConfigDict, name: str) -> None:
  registry.import_plugins(config.get("imports", ()))
  if name in methods.METHODS and methods.METHODS.get(name).section:
    with config.unlocked():
      config[name] = placeholders(methods.METHODS.get(name).section)


def _parse_value(value: Any, current: Any, key: str) -> Any:
  if not isinstance(value, str):
    return value
  if isinstance(current, str):
    return value  # a text field keeps the text ("0,1,2" is not a tuple here)
  if isinstance(current, bool) and value.lower() in ("true", "false"):
    return value.lower() == "true"
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    if current is None:
      return value
    raise ConfigError(f"config.{key}={value}: invalid literal for {type(current).__name__} (write a Python "
                      f"literal, e.g. {current!r})") from None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """A nested config (or its JSON) as ``{"a.b": value, "teachers.[0].name": ...}``."""
  if isinstance(tree, Mapping):
    return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
  if isinstance(tree, (list, tuple)) and tree and isinstance(tree[0], Mapping):
    return {k: v for i, value in enumerate(tree) for k, v in flatten(value, f"{prefix}[{i}].").items()}
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def get_field(config: ml_collections.ConfigDict, path: str) -> Any:
  """``config.<a>.<b>`` of a dotted path."""
  node = config
  for part in path.split("."):
    node = node[part]
  return node
