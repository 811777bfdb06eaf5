"""Shared test helpers: random teachers, a method built through the real config resolution."""

from __future__ import annotations

import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.training import run as run_lib
from mmkd_jax import config as config_lib
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.training import setup as train
from mmkd_jax.data import sources
from mmkd_jax.data.sources import DatasetSpec
from mmkd_jax.methods import bilevel as bilevel_methods
from mmkd_jax.methods import build_method
from mmkd_jax.models import get_model
from mmkd_jax.teachers import Teacher, fingerprint, teacher_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "digits.py")


@functools.lru_cache(maxsize=64)
def _random_variables(arch: str, num_classes: int, seed: int, image_shape: tuple, x64: bool):
  del x64  # part of the cache key: float64 tests need float64 variables
  init = get_model(arch, num_classes).init
  v = init(jax.random.key(seed), jnp.zeros((1, *image_shape)))
  return v, fingerprint(v)


def random_teachers(archs: Sequence[str] = ("resnet8", "resnet14", "wrn_16_1"), num_classes: int = 10,
                    seed: int = 50, image_shape=(32, 32, 3), names: Sequence[str] | None = None) -> list[Teacher]:
  teachers = []
  for i, arch in enumerate(archs):
    v, fp = _random_variables(arch, num_classes, seed + i, tuple(image_shape), bool(jax.config.jax_enable_x64))
    teachers.append(Teacher(names[i] if names else f"t{i}", arch, num_classes, v, fp))
  return teachers


def _teacher_outputs(teachers, x, layer):
  return jax.jit(lambda v, x: teacher_forward(teachers, v, x, layer))([t.variables for t in teachers], x)


STATE_FIELDS = ("params", "model_state", "opt_state", "meta_params", "meta_opt_state", "buffer")


def as_float64(state, fields: Sequence[str] = STATE_FIELDS):
  """The TrainState with the float32 leaves of ``fields`` in float64: float64 tests separate
  rounding amplification from real differences."""
  cast = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, tree)
  return state.replace(**{field: cast(getattr(state, field)) for field in fields})


def digits_smoke(**overrides):
  """The digits smoke config (unresolved) with dotted-field overrides."""
  return config_lib.load(DIGITS, "smoke", overrides)


def method_and_batch(name: str, batch_size: int = 16, num_classes: int = 10, feature_layer: int | None = None,
                     **overrides):
  """A method built by resolving ``name`` on a config, with a random batch and 3 teachers
  (``lookahead_of(method)`` gives a bi-level one's configured look-ahead objectives)."""
  teachers = random_teachers(num_classes=num_classes)
  c = config_lib.base_config()
  c.method = name
  c.batch_size = batch_size
  c.teachers = [config_lib.teacher(t.name, t.arch) for t in teachers]
  if name in ("mmkd", "bomd"):
    c[name].buffer_size = batch_size
  if feature_layer is not None:
    c.feature_layer = feature_layer
  config_lib.set_fields(c, overrides)
  c = config_lib.resolve(c)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch_size, 32, 32, 3)), jnp.float32)
  logits, feats = _teacher_outputs(teachers, x, c.feature_layer)
  batch = {"image": x, "label": jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
           "teacher_logits": logits * 3.0, "teacher_feat": feats, "epoch": jnp.asarray(1)}
  spec = DatasetSpec("synthetic", num_classes, (32, 32, 3), (0.5,) * 3, (0.25,) * 3)
  run = train.run_info(c, spec, teachers, get_model("resnet8", num_classes), 1)
  method = build_method(c, run)
  _CONFIGS[id(method)] = c
  return method, batch


_CONFIGS: dict[int, object] = {}   # the config each method_and_batch method was built from


def lookahead_of(method):
  """The configured look-ahead objectives of a method made by ``method_and_batch``."""
  return bilevel_methods.lookahead_objectives(_CONFIGS[id(method)], method)


def steps_and_state(name: str, batch_size: int = 16, num_classes: int = 10, steps_per_epoch: int = 10,
                    **overrides):
  """The real Steps of a method (synthetic 32x32 data, 3 random teachers, precomputed outputs),
  its initial state and a raw host batch."""
  from mmkd_jax.training import parallel  # pylint: disable=import-outside-toplevel
  from mmkd_jax.training import steps as steps_lib
  teachers = random_teachers(num_classes=num_classes)
  c = config_lib.base_config()
  config_lib.set_fields(c, {"method": name, "batch_size": batch_size, "teacher_source": "precomputed"})
  c.teachers = [config_lib.teacher(t.name, t.arch) for t in teachers]
  if name in ("mmkd", "bomd"):
    c[name].buffer_size = batch_size
  c = config_lib.resolve(config_lib.set_fields(c, overrides))
  rng = np.random.default_rng(0)
  raw = {"image": rng.integers(0, 256, (batch_size, 32, 32, 3)).astype(np.uint8),
         "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
         "index": np.arange(batch_size, dtype=np.int32), "replay": np.zeros(batch_size, np.int32)}
  x = (raw["image"].astype(np.float32) / 255 - 0.5) / 0.25
  logits, feats = _teacher_outputs(teachers, jnp.asarray(x), c.feature_layer)
  raw.update(teacher_logits=np.asarray(logits) * 3.0, teacher_feat=tuple(np.asarray(f) for f in feats))
  spec = DatasetSpec("synthetic", num_classes, (32, 32, 3), (0.5,) * 3, (0.25,) * 3)
  method = build_method(c, train.run_info(c, spec, teachers, get_model(c.student, num_classes, 1, c.dtype), 1))
  steps = steps_lib.make_steps(c, method, spec, teachers, parallel.data_mesh(), steps_per_epoch)
  return steps, steps_lib.init_state(steps, raw, seed=0), jax.tree.map(jnp.asarray, raw)


def digits_teacher_record(name: str) -> dict:
  """teacher.json metadata of a teacher of the digits smoke config named ``name``, as
  ``mode=train_teacher`` records it (its identity), so tests can save random teachers that the
  pipeline accepts as trained with the config's settings."""
  from mmkd_jax.teachers import stages as teacher_stages  # pylint: disable=import-outside-toplevel
  config = config_lib.validate(digits_smoke())
  (entry,) = [t for t in config.teachers if t.name == name]
  return {"dataset": "digits", "identity": teacher_stages.identity(config, entry)}


def save_random_digits_teachers(root: str) -> str:
  """The digits smoke config's two teachers (s_resnet8a, s_resnet8b: random resnet8, seed 40)
  saved under ``root`` with their recorded identity, as the pipeline finds trained ones."""
  from mmkd_jax import teachers as teachers_lib  # pylint: disable=import-outside-toplevel
  for t in random_teachers(("resnet8", "resnet8"), seed=40, names=("s_resnet8a", "s_resnet8b")):
    teachers_lib.save_teacher(os.path.join(root, f"digits_{t.name}"), t.arch, 10, t.variables,
                              digits_teacher_record(t.name))
  return root


def trainer_config(teacher_dir, data_dir, **overrides):
  """The digits smoke setting for trainer and loop tests: online teachers, one epoch, sync saves."""
  c = digits_smoke(teacher_dir=teacher_dir, data_dir=data_dir, teacher_source="online", epochs=1,
                   lr_milestones=(1,), async_checkpoints=False)
  return config_lib.set_fields(c, overrides)


def run_trainer(config, workdir):
  """train_and_evaluate on ``config`` (validated), its teachers loaded as the CLI does."""
  config = config_lib.validate(config)
  loaded = teacher_stages.load_teachers(config)
  return run_lib.train_and_evaluate(config, workdir, loaded, teacher_stages.open_cache(config, loaded), quiet=True)


def state_leaves(state):
  """Every array a resumed run must reproduce bit for bit."""
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.model_state, state.opt_state, state.meta_params, state.buffer)))]


def metric_records(workdir):
  """metrics.jsonl without what differs between runs by nature (wall time, throughput)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "train/images_per_s")} for line in f]


def files_below(directory) -> list[str]:
  """Every file below ``directory``, and every directory but the empty ``tmp*tfds`` ones TFDS
  4.9.10 leaves in TMPDIR each time it opens a dataset not prepared yet
  (``DatasetInfo.initialize_from_bucket`` calls ``tempfile.mkdtemp("tfds")`` and never removes it)."""
  found = []
  for root, dirs, files in os.walk(directory):
    found += [os.path.join(root, f) for f in files]
    found += [os.path.join(root, d) for d in dirs if not (d.startswith("tmp") and d.endswith("tfds"))]
  return found


def dataset_spec_of(name="digits", data_dir="", **fields):
  """The DatasetSpec of dataset ``name`` under ``data_dir`` with config ``fields`` set."""
  c = config_lib.base_config()
  c.dataset, c.data_dir = name, data_dir
  config_lib.set_fields(c, fields)
  return sources.dataset_spec(c)
