"""``mode=show_config``: every field of a resolved config with its value, its default and what it
means (the comments beside the fields in ``config.base_config``, the teacher entry's fields,
each method's own)."""

from __future__ import annotations

import json
import inspect
import re

import ml_collections

from mmkd_jax import config as config_lib
from mmkd_jax import methods
from mmkd_jax.methods import bilevel
from mmkd_jax.config.fields import flatten


# The fields of a teacher entry (config.teacher), for show_config.
TEACHER_FIELDS = {
    "name": "the teacher's name (its directory <teacher_dir>/<dataset>[-<split>]_<name>)",
    "arch": "a registered model",
    "checkpoint": "an orbax teacher directory or a .pth/.npz file, used as it is; '' = train into teacher_dir",
    "seed": "the teacher's initialisation and data order",
    "classes": "train only on these classes' images (a specialist); () = all",
    "label_noise": "share of its training labels replaced by another class (symmetric, label_noise_seed)",
    "train_split": "its own training split (e.g. train[:500]); '' = the run's",
    "epochs": "its epochs; 0 = teacher_training.epochs",
    "lr": "its learning rate; 0 = teacher_training.lr",
}


def _field_comments() -> dict[str, str]:
  """The comments beside the fields in ``base_config``'s source: a field's own trailing comment,
  else the whole block of comment lines right above it, joined."""
  out: dict[str, str] = {}
  block: list[str] = []
  source = inspect.getsource(config_lib.base_config) + inspect.getsource(bilevel.add_meta_section)
  for line in source.splitlines():
    stripped = line.strip()
    if stripped.startswith("#"):
      block.append(stripped.lstrip("# "))
      continue
    field = re.match(r"c\.([\w.]+)(?::[^=]*)?\s*=(.*)$", stripped)
    if field:
      trailing = re.search(r"#\s*(.+)$", field.group(2))
      note = trailing.group(1) if trailing else " ".join(block)
      if note:
        out[field.group(1)] = note
    block = []
  return out


def describe(config: ml_collections.ConfigDict) -> str:
  """Every field of ``config`` (resolved) with its value, the base default and a description."""
  resolved = config_lib.resolve(config)
  base, comments = flatten(json.loads(config_lib.base_config().to_json_best_effort())), _field_comments()
  spec = methods.METHODS.get(resolved.method)
  rows = []
  for key, value in flatten(json.loads(resolved.to_json_best_effort())).items():
    head = key.split(".")[0]
    note = comments.get(key) or comments.get(head) or ""
    if head == spec.name:
      note = note or f"method {spec.name}'s own field ({spec.description})"
    elif head in methods.METHODS:
      note = note or f"method {head}'s field, set when --config.method={head}"
    elif key.startswith("weights.") or key.startswith("meta.lookahead_weights."):
      note = note or ("weight of the raw loss term " + key.split(".")[-1])
    elif key.startswith("teachers["):
      note = TEACHER_FIELDS.get(key.rsplit(".", 1)[-1], "")
    default = base.get(key, "<method default>")
    rows.append(f"{key:40s} {json.dumps(value):>28s}   default {json.dumps(default) if default is not None else '<method default>'}"
                + (f"   # {note}" if note else ""))
  return "\n".join(rows)
