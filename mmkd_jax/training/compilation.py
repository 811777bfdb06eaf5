"""The persistent compilation cache: the compiled steps of a command are kept on disk, so the next
command with the same programs (another seed, a resume, the same job on other data of the same
shapes) loads them instead of compiling again. Measured on the digits smoke run (2 cores): 43.7 s
without, 31.5 s with a warm cache; in the whole MMKD digits run the compilation and first step
took 20.6-48.1 s cold and 10.8-14.7 s warm (experiments/RESULTS.md section 12's timing records).

Where: ``$MMKD_JAX_COMPILATION_CACHE`` (a directory; ``off`` turns the cache off), else
``$XDG_CACHE_HOME/mmkd_jax/xla`` (``~/.cache/...``), always in a subdirectory named after this
machine's CPU (architecture and instruction-set flags): an entry is native code, and XLA:CPU runs
one built for another CPU after only a log line, so a home directory shared by cluster nodes of
different CPUs must not share entries. A cache directory set through JAX itself
(``JAX_COMPILATION_CACHE_DIR``) is used as it is. The cache is trusted code: keep it where only you
can write (JAX's documentation says the same).
"""

from __future__ import annotations

import hashlib
import os
import platform

import jax

ENV = "MMKD_JAX_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no", "none")
# A bound turns on JAX's least-recently-used eviction and, with it, a file lock around each read
# and write: processes sharing the cache (hosts of one machine, parallel seeds) never read an entry
# another one is still writing. One digits MMKD run adds ~3 MB.
MAX_BYTES = 4 << 30


def machine_key() -> str:
  """``<architecture>-<hash of the CPU's flags>``: equal on machines that can run each other's code."""
  flags = ""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line.split(":", 1)[1] for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:  # not Linux: the processor string stands in
    flags = platform.processor()
  digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
  return f"{platform.machine() or 'cpu'}-{digest}"


def cache_directory(environ: dict | None = None) -> str | None:
  """The directory this command's compiled programs go to, or None when the cache is off."""
  environ = os.environ if environ is None else environ
  chosen = environ.get(ENV, "").strip()
  if chosen.lower() in OFF:
    return None
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return environ["JAX_COMPILATION_CACHE_DIR"]
  home = environ.get("HOME") or os.path.expanduser("~")
  base = chosen or os.path.join(environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "mmkd_jax", "xla")
  return os.path.join(base, machine_key())


def enable(environ: dict | None = None) -> str | None:
  """Turns the cache on for this process (before its first compilation); returns its directory.
  Only programs that took over a second to compile are kept (JAX's default), so the cache holds
  the training, meta and evaluation steps, not every small helper."""
  directory = cache_directory(environ)
  if directory is not None:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return directory
