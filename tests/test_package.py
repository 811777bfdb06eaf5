"""The package's shape, from its source (``ast``, nothing imported): no import cycle, every import
of the package's own modules at the top of its module, third-party imports inside functions only
for the optional extras, a docstring saying each module's job, about a dozen entries at the top,
and tests/ mirroring the package's folders."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "mmkd_jax")
# Imported where they are used because a plain install lacks them (setup.cfg's extras): torch,
# torchvision and timm (.pth files, parity), matplotlib (plots), google.cloud (gs:// locks).
OPTIONAL = ("torch", "torchvision", "timm", "matplotlib", "google")
# Imported where they are used because importing them costs seconds at every command's start
# (test_a_command_starts_without_importing_torch_or_scikit_learn): scikit-learn (only preparing the
# digits needs it) and tensorboardX (imported with torch blocked).
DEFERRED = ("sklearn", "tensorboardX")


def _modules(package: str = PACKAGE) -> dict[str, str]:
  """dotted module name -> path, for every module of the package."""
  out = {}
  for root, _, files in os.walk(package):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        dotted = os.path.relpath(path, os.path.dirname(package))[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def _imports(path: str, module: str) -> list[tuple[str, bool]]:
  """(imported name, whether inside a function) of every import statement of a module."""
  tree = ast.parse(open(path).read())
  local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
           for n in ast.walk(f) if n is not f}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(a.name, id(node) in local) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = module.split(".")[: -node.level + (1 if path.endswith("__init__.py") else 0) or None]
        base = ".".join(parts + ([node.module] if node.module else []))
      found += [(f"{base}.{a.name}", id(node) in local) for a in node.names] + [(base, id(node) in local)]
  return found


def _graph(package: str = PACKAGE) -> tuple[dict[str, set[str]], list[str], list[str]]:
  """(module -> package modules it imports, function-local package imports, function-local
  third-party imports that are not optional extras)."""
  modules = _modules(package)

  def resolve(name: str) -> str | None:
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None
  edges: dict[str, set[str]] = {m: set() for m in modules}
  local_own, local_other = [], []
  for module, path in modules.items():
    for name, inside in _imports(path, module):
      if name.startswith("mmkd_jax"):
        target = resolve(name)
        if target and target != module and not module.startswith(target + "."):
          edges[module].add(target)
          if inside:
            local_own.append(f"{module} -> {target}")
      elif inside and not name.split(".")[0] in OPTIONAL + DEFERRED and name:
        local_other.append(f"{module} -> {name}")
  return edges, sorted(set(local_own)), sorted(set(local_other))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))
  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle_and_every_own_import_at_the_top():
  edges, local_own, local_other = _graph()
  assert _cycles(edges) == []
  assert local_own == [], "function-local imports of the package's own modules (a piece in the wrong module?)"
  assert local_other == [], f"function-local imports that are no optional extra ({', '.join(OPTIONAL)}) nor deferred"


def test_the_checks_see_a_cycle_and_a_local_import(tmp_path):
  """The checks above fail on a package that has what they look for."""
  package = tmp_path / "mmkd_jax"
  package.mkdir()
  (package / "__init__.py").write_text('"""A package."""\n')
  (package / "a.py").write_text('"""A."""\nfrom mmkd_jax import b\n')
  (package / "b.py").write_text('"""B."""\n\n\ndef f():\n  from mmkd_jax import a\n  import numpy\n')
  edges, local_own, local_other = _graph(str(package))
  assert _cycles(edges) == [["mmkd_jax.a", "mmkd_jax.b"]]
  assert local_own == ["mmkd_jax.b -> mmkd_jax.a"] and local_other == ["mmkd_jax.b -> numpy"]


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_module_says_its_job_first(module):
  docstring = ast.get_docstring(ast.parse(open(_modules()[module]).read()))
  assert docstring and docstring.strip().split("\n")[0].strip(), f"{module} has no docstring saying its job"


def test_about_a_dozen_entries_at_the_top_and_tests_mirror_the_folders():
  entries = sorted(e for e in os.listdir(PACKAGE) if e != "__pycache__")
  assert len(entries) <= 14, entries
  tests = os.path.join(ROOT, "tests")
  folders = sorted(d for d in os.listdir(tests) if os.path.isdir(os.path.join(tests, d))
                   and d not in ("plugin", "__pycache__"))
  packages = sorted(d for d in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, d, "__init__.py")))
  assert folders == packages
  for folder in folders:  # each test module names a module of its folder (test_<folder>.py: its __init__)
    for name in os.listdir(os.path.join(tests, folder)):
      if name.startswith("test_") and name.endswith(".py"):
        target = name[len("test_"):]
        assert os.path.isfile(os.path.join(PACKAGE, folder, target)) or target == f"{folder}.py", f"{folder}/{name}"


def test_a_command_starts_without_importing_torch_or_scikit_learn():
  """Every command imports the package: torch (through tensorboardX's writer) and scikit-learn
  (the digits' source) took 6.5 of its 11 s of imports on a 2-core CPU; neither is needed to
  start. A later ``import torch`` still works in the same process."""
  pytest.importorskip("torch")
  code = ("import sys, mmkd_jax.main; print(sorted({'torch', 'sklearn', 'tensorboardX'} & set(sys.modules))); "
          "import torch; print(torch.ones(2).sum().item())")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == ["['tensorboardX']", "2.0"], done.stdout
