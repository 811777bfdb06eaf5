"""Which code made a table's runs: the package versions its records name (``code_version``,
``<version>+<git describe>[-dirty]``), and whether the package itself differs between them.

A results queue outlives one commit: records written at several commits are one code version
when no file of the package (``mmkd_jax/``, ``configs/``) changed between those commits, which
``git diff`` settles from the records alone. Runs of uncommitted code (``-dirty``) cannot be
checked and are said so.
"""

from __future__ import annotations

import os
import subprocess
from typing import Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_PATHS = ("mmkd_jax", "configs")


def package_differs(first: str, second: str, root: str = ROOT) -> bool | None:
  """Whether the package's files differ between two commits; None where git cannot tell (a commit
  not in this checkout, no git)."""
  try:
    done = subprocess.run(["git", "-C", root, "diff", "--quiet", first, second, "--", *PACKAGE_PATHS],
                          capture_output=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return {0: False, 1: True}.get(done.returncode)


def versions_line(versions: Iterable[str], root: str = ROOT) -> str:
  """One line on the code versions of a table's runs: '' for one version; else whether their
  package is the same (a line a reader can trust) or not (a WARNING)."""
  versions = sorted(set(versions))
  if len(versions) < 2:
    return ""
  listed = ", ".join(versions)
  commits = [v.partition("+")[2] for v in versions]
  if any(not c or c.endswith("-dirty") for c in commits):
    return f"WARNING: these runs come from {len(versions)} code versions, some uncommitted or unrecorded (cannot be compared): {listed}"
  groups: list[list[str]] = []  # versions with the same package files
  for version, commit in zip(versions, commits):
    for group in groups:
      verdict = package_differs(group[0].partition("+")[2], commit, root)
      if verdict is None:
        return f"WARNING: these runs come from {len(versions)} code versions, not all in this checkout: {listed}"
      if not verdict:
        group.append(version)
        break
    else:
      groups.append([version])
  if len(groups) > 1:
    return (f"WARNING: these runs come from {len(versions)} code versions with {len(groups)} different packages: "
            + " | ".join(", ".join(g) for g in groups))
  return (f"These runs come from {len(versions)} commits ({listed}) with the same package: no file under "
          f"{'/, '.join(PACKAGE_PATHS)}/ differs between them (git diff).")
