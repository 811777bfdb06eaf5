"""Shared fixtures: where the PyTorch reference vectors live; random digits teachers and a TFDS
directory for the trainer and loop tests (a module may define its own)."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

# The tests mirror the package's folders (--import-mode=importlib, so two test modules may share a
# name); the shared helpers beside this file are importable from every folder.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_DEFAULT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "testvectors"


# The longest files of the default suite, longest first (seconds in 2 processes on a 2-core VM,
# 2026-12-08: test_kill 767, test_loop 526, test_dispatch 436, test_storage 356, test_compilation
# 312, test_hypergradient 269, test_parallel 217). `make test` hands whole files to its processes in
# collection order (--no-loadscope-reorder): these start first, and the short files fill the other
# process around them instead of one long file running alone at the end (it did: ~10 minutes).
LONGEST_FILES = ("test_kill.py", "training/test_loop.py", "training/test_dispatch.py", "runs/test_storage.py",
                 "training/test_compilation.py", "distill/test_hypergradient.py", "training/test_parallel.py")


def pytest_collection_modifyitems(items: list) -> None:
  here = os.path.dirname(os.path.abspath(__file__))
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(pathlib.Path(os.path.relpath(item.path, here)).as_posix(), len(rank)))


def testvectors_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("MMKD_TESTVECTORS", _DEFAULT))


@pytest.fixture(scope="session")
def testvectors() -> pathlib.Path:
  path = testvectors_dir()
  if not path.is_dir():
    message = f"reference test vectors not found at {path} (set MMKD_TESTVECTORS)"
    if os.environ.get("CI"):  # in CI a missing folder must fail the suite, not skip 40 tests
      pytest.fail(message + "; CI runs with ../shared beside the checkout", pytrace=False)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """Persistent XLA cache: the trainer tests compile the same steps several times, in this process
  and in the commands they start (which inherit the environment: none writes to ~/.cache)."""
  import jax  # pylint: disable=import-outside-toplevel
  from mmkd_jax.training import compilation  # pylint: disable=import-outside-toplevel
  os.environ[compilation.ENV] = str(tmp_path_factory.mktemp("xla_cache"))
  compilation.enable()
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  yield


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """Two random (untrained) resnet8 teachers: enough to exercise every code path fast."""
  from mmkd_jax import teachers as teachers_lib  # pylint: disable=import-outside-toplevel
  from mmkd_jax.models import get_model  # pylint: disable=import-outside-toplevel
  from helpers import digits_teacher_record  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("teachers")
  for i, name in enumerate(("s_resnet8a", "s_resnet8b")):
    model = get_model("resnet8", 10)
    variables = model.init(jax.random.key(10 + i), jnp.zeros((1, 32, 32, 3)))
    teachers_lib.save_teacher(str(root / f"digits_{name}"), "resnet8", 10, variables, digits_teacher_record(name))
  return str(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def gcs():
  """A local GCS server (tests/fake_gcs.py) for the whole session; each test makes its buckets."""
  from fake_gcs import fake_gcs  # pylint: disable=import-outside-toplevel
  with fake_gcs() as server:
    yield server
