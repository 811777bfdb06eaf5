"""Name -> object tables for the parts a user can add from their own file (methods, models,
datasets), in the style of torchdistill's registries: a decorator registers, a config names.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
from typing import Generic, Iterable, TypeVar

from mmkd_jax.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
  """A table of named entries; ``kind`` names them in errors ("method", "model", ...)."""

  def __init__(self, kind: str, how_to_add: str):
    self.kind = kind
    self.how_to_add = how_to_add
    self._entries: dict[str, T] = {}
    self._origins: dict[str, str] = {}

  def add(self, name: str, entry: T, origin: str) -> None:
    """Registers ``entry``; registering a name twice from another origin is an error (two
    parts would silently shadow each other), from the same origin (a re-import) a replacement."""
    if not name or not isinstance(name, str):
      raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
    if name in self._entries and self._origins[name] != origin:
      raise ValueError(f"{self.kind} {name!r} is already registered by {self._origins[name]}; "
                       f"{origin} cannot register it again (choose another name)")
    self._entries[name] = entry
    self._origins[name] = origin

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}. "
                             f"{self.how_to_add}")
    return self._entries[name]

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self):
    return iter(self._entries)


def origin_of(obj: object) -> str:
  """Where a registered object was defined (for the message of a name registered twice)."""
  if isinstance(obj, functools.partial):
    return origin_of(obj.func)
  return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def import_plugins(modules: Iterable[str]) -> list[types.ModuleType]:
  """Imports the user's modules (dotted names or ``.py`` paths) so that their decorators
  register methods, models and datasets, and returns them. A path is imported once, however
  often it is named."""
  imported = []
  for module in modules:
    if not module:
      continue
    if module.endswith(".py") or os.sep in module:
      path = os.path.abspath(os.path.expanduser(module))
      if not os.path.isfile(path):
        raise FileNotFoundError(f"config.imports: {module} does not exist (a .py file or a dotted "
                                "module name on the Python path)")
      name = "mmkd_jax_plugin_" + "".join(c if c.isalnum() else "_" for c in path)
      if name in sys.modules:
        imported.append(sys.modules[name])
        continue
      spec = importlib.util.spec_from_file_location(name, path)
      loaded = importlib.util.module_from_spec(spec)
      sys.modules[name] = loaded
      try:
        spec.loader.exec_module(loaded)
      except BaseException:
        del sys.modules[name]
        raise
      imported.append(loaded)
    else:
      try:
        imported.append(importlib.import_module(module))
      except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"config.imports: cannot import {module!r} ({e}); put its "
                                  "directory on PYTHONPATH or give the path of its .py file") from e
  return imported
