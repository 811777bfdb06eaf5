"""mmkd_jax.registry: a name registered twice from another module is an error, a re-import
replaces it, an unknown name lists what is known, and config.imports imports a file once."""

from __future__ import annotations

import functools

import pytest

from mmkd_jax.errors import UnknownNameError
from mmkd_jax.registry import Registry, import_plugins, origin_of


def _table() -> Registry[int]:
  table: Registry[int] = Registry("widget", "Register one with @register_widget.")
  table.add("a", 1, "mod_a.make")
  table.add("b", 2, "mod_b.make")
  return table


def test_entries_in_order_and_lookup():
  table = _table()
  assert table.names() == ("a", "b") and list(table) == ["a", "b"] and "a" in table and "c" not in table
  assert table.get("b") == 2


def test_a_name_from_another_origin_is_refused_and_a_reimport_replaces():
  table = _table()
  with pytest.raises(ValueError, match="widget 'a' is already registered by mod_a.make; mod_c.make cannot"):
    table.add("a", 3, "mod_c.make")
  assert table.get("a") == 1
  table.add("a", 4, "mod_a.make")
  assert table.get("a") == 4
  with pytest.raises(ValueError, match="non-empty string name"):
    table.add("", 5, "mod_a.make")


def test_an_unknown_name_lists_the_known_and_how_to_add():
  with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; known: a, b\. Register one with @register_widget\."):
    _table().get("c")


def _factory(num_classes, width=1):
  return num_classes * width


def test_origin_of_a_partial_is_its_function():
  assert origin_of(_factory) == f"{__name__}._factory"
  assert origin_of(functools.partial(_factory, width=2)) == origin_of(_factory)


def test_a_plugin_file_is_imported_once_however_often_named(tmp_path):
  plugin = tmp_path / "my_counter.py"
  plugin.write_text("COUNT = []\nCOUNT.append(1)\n")
  (first,) = import_plugins([str(plugin)])
  first_again, second = import_plugins([str(plugin), str(plugin)])
  assert first is first_again is second and first.COUNT == [1]


def test_a_missing_plugin_names_config_imports():
  with pytest.raises(ModuleNotFoundError, match="config.imports: cannot import 'no_such_plugin_module'"):
    import_plugins(["no_such_plugin_module"])
