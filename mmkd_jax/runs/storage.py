"""Where a run's files live: local paths and object-store URLs (``gs://bucket/...``; ``s3://`` and
the other schemes ``etils.epath`` knows) behind one small set of functions. Every file the package
writes or reads on a path a user gave (work, teacher, cache, export, data directories) goes
through here; orbax and TFDS take the same paths (``for_library``).

Object stores have no directories, no append and no atomic rename, so the rules are:

* a file is written as one object (``write_text``): a reader sees the whole of it or nothing
  (GCS and S3 make an object visible only once its upload is complete); locally the same holds
  through a temporary file and ``os.replace``;
* whatever declares something finished (``teacher.json``, a cache shard's metadata, TFDS's
  ``dataset_info.json``, ``summary.json``) is written after everything it vouches for, and a
  reader trusts a directory only through that marker;
* what a library can only write to local disk (array_record files: TFDS datasets and the teacher
  cache) is built in a local staging directory and uploaded with its marker last (``staged``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, Iterator, Sequence

from etils import epath

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
  """True for ``scheme://...`` (an object store), False for a local path."""
  return "://" in os.fspath(path)


def absolute(path: PathLike) -> str:
  """The path as a string a message or another process can use: URLs as given, local paths
  absolute (``~`` expanded)."""
  path = os.fspath(path)
  return path.rstrip("/") if is_url(path) else os.path.abspath(os.path.expanduser(path))


def as_path(path: PathLike) -> epath.Path:
  return epath.Path(absolute(path))


def join(base: PathLike, *parts: str) -> str:
  base = os.fspath(base)
  return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def basename(path: PathLike) -> str:
  return posixpath.basename(os.fspath(path).rstrip("/"))


def parent(path: PathLike) -> str:
  path = os.fspath(path).rstrip("/")
  return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def is_dir(path: PathLike) -> bool:
  """A local directory, or a URL prefix holding at least one object."""
  return as_path(path).is_dir()


def is_file(path: PathLike) -> bool:
  return as_path(path).is_file()


def makedirs(path: PathLike) -> None:
  """Creates a local directory (and its parents); a no-op on object stores, which have none."""
  if not is_url(path):
    os.makedirs(absolute(path), exist_ok=True)


def listdir(path: PathLike) -> list[str]:
  """Names directly below ``path`` (empty when it does not exist)."""
  p = as_path(path)
  return sorted(child.name for child in p.iterdir()) if p.is_dir() else []


def walk(path: PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
  """``os.walk`` (top-down: prune by editing the directory list) for local paths and URLs."""
  if not is_url(path):
    yield from os.walk(os.fspath(path))
    return
  scheme = os.fspath(path).split("://")[0]
  for directory, subdirs, files in as_path(path).walk():
    directory = os.fspath(directory)  # fsspec's walk drops the scheme
    yield (directory if is_url(directory) else f"{scheme}://{directory.lstrip('/')}"), subdirs, files


def read_text(path: PathLike) -> str:
  return as_path(path).read_text()


def read_json(path: PathLike) -> Any:
  return json.loads(read_text(path))


def write_text(path: PathLike, text: str) -> None:
  """Writes ``path`` whole or not at all (local: temporary file + rename; object store: one
  object, visible only once complete)."""
  if is_url(path):
    as_path(path).write_text(text)
    return
  path = absolute(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_json(path: PathLike, value: Any, indent: int | None = 2) -> None:
  write_text(path, json.dumps(value, indent=indent))


def remove_tree(path: PathLike) -> None:
  """Deletes a directory (or URL prefix) and everything below it, if present."""
  p = as_path(path)
  if p.is_dir():
    p.rmtree()
  elif p.exists():
    p.unlink()


def move_tree(source: PathLike, target: PathLike) -> None:
  """Moves a directory: a rename locally; copy then delete on an object store (not atomic: used
  only to set unreadable checkpoints aside)."""
  if not is_url(source) and not is_url(target):
    os.makedirs(os.path.dirname(absolute(target)), exist_ok=True)
    shutil.move(absolute(source), absolute(target))
    return
  copy_tree(source, target)
  as_path(source).rmtree()


def copy_tree(source: PathLike, target: PathLike, last: Sequence[str] = ()) -> None:
  """Copies every file below ``source`` to ``target`` (either local or a URL); files named in
  ``last`` (markers) go after all the others, so a reader that trusts the marker finds everything
  it vouches for."""
  source, target = absolute(source), absolute(target)
  relpath = posixpath.relpath if is_url(source) else os.path.relpath
  files = sorted(relpath(join(directory, name), source) for directory, _, names in walk(source) for name in names)
  files.sort(key=lambda f: os.path.basename(f) in last)  # stable: markers at the end
  for relative in files:
    destination = as_path(join(target, *relative.split(os.sep)))
    if not is_url(target):
      destination.parent.mkdir(parents=True, exist_ok=True)
    as_path(join(source, *relative.split(os.sep))).copy(destination, overwrite=True)


@contextlib.contextmanager
def staging_dir(target: PathLike) -> Iterator[str]:
  """An empty local directory (under TMPDIR) to build what goes to ``target`` in, removed
  afterwards. The same target gets the same directory, so what a killed build left there (a
  teacher-cache shard can be gigabytes) is removed by the next build instead of piling up."""
  root = os.path.join(tempfile.gettempdir(), "mmkd_jax_staging")
  local = os.path.join(root, hashlib.sha256(absolute(target).encode()).hexdigest()[:16])
  shutil.rmtree(local, ignore_errors=True)
  os.makedirs(local)
  try:
    yield local
  finally:
    shutil.rmtree(local, ignore_errors=True)
    with contextlib.suppress(OSError):  # others may be staging beside it
      os.rmdir(root)


@contextlib.contextmanager
def staged(target: PathLike, last: Sequence[str] = ()) -> Iterator[str]:
  """A local directory to build ``target`` in: ``target`` itself when local; for a URL a staging
  directory uploaded to ``target`` when the block succeeds, markers (``last``) at the end. For
  writers that cannot write to object stores (array_record)."""
  if not is_url(target):
    makedirs(target)
    yield absolute(target)
    return
  with staging_dir(target) as local:
    yield local
    copy_tree(local, target, last)


def for_library(path: PathLike) -> str:
  """The form orbax, TFDS and tensorboardX take: URLs unchanged, local paths absolute."""
  return absolute(path)
