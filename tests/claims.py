"""The claim -> test tables of docs/reliability.md, generated from the tests' ``claim`` markers.

    python tests/claims.py          # rewrites the test columns of docs/reliability.md

A test (any ``test_*.py`` below ``tests/``) names the claims it proves with
``@pytest.mark.claim(24, "sigterm")``: an integer is a
row of the failure table, a string a row of the headline-claims table. The tables' test columns
are written from those markers (read from the source with ``ast``, nothing is imported), so they
cannot name a test that does not exist or sits in another file; ``tests/test_docs.py`` fails
when the document differs from what this script writes, or when a row has no test.
"""

from __future__ import annotations

import ast
import collections
import os
import re
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(TESTS), "docs", "reliability.md")
NONE = "**no test**"


def _marks(node: ast.FunctionDef) -> tuple[list, bool, list[str]]:
  """(the claim keys, whether the test is slow, the ids of its parameters marked slow) of a test
  function's decorators."""
  claims, slow, slow_ids = [], False, []
  for decorator in node.decorator_list:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = ast.unparse(target)
    if name == "pytest.mark.slow":
      slow = True
    elif name == "pytest.mark.claim" and isinstance(decorator, ast.Call):
      claims += [ast.literal_eval(arg) for arg in decorator.args]
    elif name == "pytest.mark.parametrize" and isinstance(decorator, ast.Call) and len(decorator.args) > 1:
      for value in getattr(decorator.args[1], "elts", []):
        if (isinstance(value, ast.Call) and ast.unparse(value.func) == "pytest.param"
            and any("pytest.mark.slow" in ast.unparse(k.value) for k in value.keywords if k.arg == "marks")):
          slow_ids.append(str(ast.literal_eval(value.args[0])) if len(value.args) == 1 else "-".join(
              str(ast.literal_eval(a)) for a in value.args))
  return claims, slow, slow_ids


def collect(tests_dir: str = TESTS) -> dict[object, list[tuple[str, str, bool]]]:
  """claim key -> [(test file relative to tests/, test name, slow)] over every ``test_*.py`` below
  ``tests/``."""
  found = collections.defaultdict(list)
  for root, dirs, files in os.walk(tests_dir):
    dirs.sort()
    for name in sorted(files):
      if not (name.startswith("test_") and name.endswith(".py")):
        continue
      path = os.path.join(root, name)
      with open(path) as f:
        tree = ast.parse(f.read())
      relative = os.path.relpath(path, tests_dir)
      for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
          claims, slow, slow_ids = _marks(node)
          for claim in claims:  # a parameter marked slow runs only in the full suite
            found[claim].append((relative, node.name + (" (not " + ", ".join(f"[{i}]" for i in slow_ids) + ")"
                                                        if slow_ids and not slow else ""), slow))
            found[claim] += [(relative, f"{node.name}[{i}]", True) for i in slow_ids if not slow]
  return found


def _cell(tests: list[tuple[str, str, bool]]) -> str:
  return ", ".join(f"`{f}::{t.split(' ')[0]}`" + (" " + t.split(" ", 1)[1] if " " in t else "") for f, t, _ in tests)


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip("|").split(" | ")]


def render(doc: str, found: dict) -> str:
  """``doc`` with the test columns of both tables written from ``found``."""
  out = []
  for line in doc.splitlines():
    cells = _cells(line) if line.startswith("| ") else []
    key = cells[0] if cells else ""
    if re.fullmatch(r"\d+", key) and len(cells) == 4:  # the failure table: | # | failure | behaviour | tests |
      tests = found.get(int(key), [])
      both = _cell([t for t in tests if not t[2]]) + ("; slow: " + _cell([t for t in tests if t[2]])
                                                      if any(t[2] for t in tests) else "")
      cells[3] = both.lstrip("; ") or NONE
      line = "| " + " | ".join(cells) + " |"
    elif re.fullmatch(r"`[a-z][a-z0-9-]*`", key) and len(cells) == 4:  # headline claims: | key | claim | CI | slow |
      tests = found.get(key.strip("`"), [])
      cells[2] = _cell([t for t in tests if not t[2]]) or NONE
      cells[3] = _cell([t for t in tests if t[2]])
      line = "| " + " | ".join(cells) + " |"
    out.append(line)
  return "\n".join(out) + ("\n" if doc.endswith("\n") else "")


def rows(doc: str) -> set:
  """Every claim key the document's two tables have."""
  keys = set()
  for line in doc.splitlines():
    if line.startswith("| "):
      key = _cells(line)[0]
      if re.fullmatch(r"\d+", key):
        keys.add(int(key))
      elif re.fullmatch(r"`[a-z][a-z0-9-]*`", key):
        keys.add(key.strip("`"))
  return keys


def main() -> int:
  with open(DOC) as f:
    doc = f.read()
  rendered = render(doc, collect())
  with open(DOC, "w") as f:
    f.write(rendered)
  missing = sorted(map(str, rows(rendered) - set(collect())))
  if missing:
    print(f"claims without a test: {', '.join(missing)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
