"""The grammar of ``config.replicas``: which seeds (and per-replica hyperparameters) one program
trains together (``mmkd_jax.training.replicas`` trains them). The one place that parses the string.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from mmkd_jax import methods
from mmkd_jax.training import optim
from mmkd_jax.config.fields import get_field, set_fields
from mmkd_jax.errors import ConfigError

REPLICA_LOOPS = ("auto", "vmap", "map")  # how one program steps the replicas (mmkd_jax/training/replicas.py)


# Scalar hyperparameters a replica may override (``config.replicas = "0:weights.feat=10,..."``):
# the ones that enter the compiled step as numbers, so one program can carry a value per replica
# (steps.with_values). ``weights.<term>`` / ``meta.lookahead_weights.<term>`` for the method's terms.
_SCALARS = (*optim.TUNABLE, "label_smoothing", "temperature", "meta.lr")
TUNABLE = (*_SCALARS, "weights.<term>", "meta.lookahead_weights.<term>")


@dataclasses.dataclass(frozen=True)
class ReplicaEntry:
  """One replica of ``config.replicas``: its seed and its overrides of tunable fields."""
  seed: int
  overrides: tuple[tuple[str, float], ...] = ()

  @property
  def name(self) -> str:
    """Its run directory under the workdir: ``seed<s>``, plus ``_<field>=<value>`` per override."""
    return "_".join([f"seed{self.seed}", *(f"{k}={v:g}" for k, v in self.overrides)])


def _tunable(field: str) -> bool:
  head, _, term = field.rpartition(".")
  return field in _SCALARS or (head in ("weights", "meta.lookahead_weights") and bool(term))


def replica_entries(config: ml_collections.ConfigDict) -> tuple[ReplicaEntry, ...]:
  """``config.replicas``: comma-separated entries ``seed[:field=value[:field=value...]]``
  ("0,1,2"; "0:weights.feat=1,0:weights.feat=10"); () without replicas."""
  text = str(config.get("replicas", "")).strip()
  if not text:
    return ()
  entries = []
  for part in text.split(","):
    seed_text, *assignments = part.strip().split(":")
    try:
      seed = int(seed_text)
    except ValueError:
      raise ConfigError(f"config.replicas: {part.strip()!r} does not start with an integer seed; entries are "
                        "seed[:field=value...], e.g. '0,1,2' or '0:weights.feat=10,1:weights.feat=10'") from None
    overrides = {}
    for assignment in assignments:
      field, eq, value = assignment.partition("=")
      field = field.strip()
      if not eq or not _tunable(field):
        raise ConfigError(f"config.replicas: {assignment!r} in entry {part.strip()!r} is not field=value of a "
                          f"tunable scalar; tunable: {', '.join(TUNABLE)}")
      try:
        overrides[field] = float(value)
      except ValueError:
        raise ConfigError(f"config.replicas: {field}={value!r} in entry {part.strip()!r} is not a number") from None
    entries.append(ReplicaEntry(seed, tuple(sorted(overrides.items()))))
  if len(set(entries)) != len(entries):
    raise ConfigError(f"config.replicas: {text!r} repeats an entry (same seed, same overrides); "
                      "its replicas would be identical")
  return tuple(entries)


def replica_seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The seeds of ``config.replicas`` ("0,1,2" -> (0, 1, 2)); () without replicas."""
  return tuple(entry.seed for entry in replica_entries(config))


def check_replica_overrides(config: ml_collections.ConfigDict) -> None:
  """Each override names a field of the resolved config; weight overrides need a non-zero base
  weight, because the base config decides which terms the compiled step computes."""
  spec = methods.METHODS.get(config.method)
  for entry in replica_entries(config):
    for field, _ in entry.overrides:
      head, _, term = field.rpartition(".")
      if head in ("weights", "meta.lookahead_weights"):
        if term not in spec.terms:
          raise ConfigError(f"config.replicas: {field}: method {config.method!r} has no term {term!r}; "
                            f"its terms: {', '.join(spec.terms)}")
        if head == "meta.lookahead_weights" and not spec.bilevel:
          raise ConfigError(f"config.replicas: {field}: method {config.method!r} has no look-ahead")
        if not get_field(config, field):
          raise ConfigError(f"config.replicas: {field} is overridden but the base config's {field} is 0, so the "
                            "compiled step does not compute that term; set it non-zero in the base config")
      elif field == "meta.lr" and not spec.bilevel:
        raise ConfigError(f"config.replicas: meta.lr: method {config.method!r} has no meta networks")


def replica_config(config: ml_collections.ConfigDict, entry: ReplicaEntry | int) -> ml_collections.ConfigDict:
  """The single run a replica is: the config with its seed and overrides, without replicas."""
  entry = entry if isinstance(entry, ReplicaEntry) else ReplicaEntry(int(entry))
  c = config.copy_and_resolve_references()
  c.seed, c.replicas = entry.seed, ""
  return set_fields(c, dict(entry.overrides))
