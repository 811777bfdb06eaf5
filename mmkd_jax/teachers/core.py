"""Frozen teachers: loading (orbax or PyTorch), saving, fingerprints, and their joint forward.

A teacher directory written by ``mode=train_teacher`` holds ``variables/`` (an orbax
checkpoint of params + batch_stats) and ``teacher.json`` (architecture, dataset, classes,
accuracy), the latter written last so a directory without it is an unfinished save. A
``.pth``/``.npz`` file is read through ``mmkd_jax.teachers.convert``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mmkd_jax.training import parallel
from mmkd_jax.runs import storage
from mmkd_jax.data.augment import augment_for, normalize
from mmkd_jax.teachers import convert
from mmkd_jax.models import get_model, with_compute_dtype

PyTree = Any
TEACHER_META = "teacher.json"


@dataclasses.dataclass(frozen=True)
class Teacher:
  name: str
  arch: str
  num_classes: int
  variables: PyTree
  fingerprint: str
  accuracy: float | None = None
  train_seconds: float | None = None  # what training it took (teachers trained by mode=train_teacher)

  @property
  def model(self):
    return get_model(self.arch, self.num_classes)


def fingerprint(variables: PyTree) -> str:
  """sha256 over every array (path, dtype, shape, bytes) of a variables tree."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables)[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
    digest.update(arr.tobytes())
  return digest.hexdigest()[:16]


def is_complete(directory: str) -> bool:
  return storage.is_file(storage.join(directory, TEACHER_META))


def save_teacher(directory: str, arch: str, num_classes: int, variables: PyTree,
                 metadata: dict[str, Any]) -> None:
  """Writes a teacher: orbax's own atomic save (every process, as orbax wants), then the JSON
  marker (process 0), then a barrier, so that no host reads the teacher before it is whole."""
  directory = storage.absolute(directory)
  if is_complete(directory):
    raise FileExistsError(f"teacher {directory} already exists; refusing to overwrite it")
  storage.makedirs(directory)
  target = storage.join(directory, "variables")
  if jax.process_index() == 0 and storage.exists(target):  # leftovers of an interrupted save
    storage.remove_tree(target)
  parallel.sync_hosts("teacher variables cleared")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, jax.device_get(variables))
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    meta = dict(metadata, arch=arch, num_classes=num_classes, fingerprint=fingerprint(variables))
    storage.write_json(storage.join(directory, TEACHER_META), meta)
  parallel.sync_hosts("teacher written")


def load_teacher(name: str, arch: str, num_classes: int, checkpoint: str,
                 image_shape: tuple[int, int, int], trust_pickle: bool = False) -> Teacher:
  """Loads a teacher from an orbax teacher directory or a PyTorch ``.pth``/``.npz`` file
  (``image_shape``: (H, W, C) of the images it will see)."""
  if storage.is_dir(checkpoint):
    if not is_complete(checkpoint):
      raise FileNotFoundError(f"teacher {name!r}: {checkpoint} has no {TEACHER_META}; it is not a "
                              "finished teacher (train it with mode=train_teacher)")
    meta = storage.read_json(storage.join(checkpoint, TEACHER_META))
    if meta["arch"] != arch or int(meta["num_classes"]) != num_classes:
      raise ValueError(f"teacher {name!r}: {checkpoint} holds a {meta['arch']} with "
                       f"{meta['num_classes']} classes, the config asks for {arch} with {num_classes}")
    model = get_model(arch, num_classes)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    try:
      variables = ocp.StandardCheckpointer().restore(storage.join(storage.absolute(checkpoint), "variables"),
                                                     abstract)
    except Exception as e:  # orbax raises several types for damaged files
      raise ValueError(f"teacher {name!r}: cannot restore {checkpoint}/variables ({e}); "
                       "re-train or re-export the teacher") from e
    return Teacher(name, arch, num_classes, variables, fingerprint(variables), meta.get("accuracy"),
                   meta.get("train_seconds"))
  model, variables = convert.load_pretrained(arch, num_classes, checkpoint, image_shape, trust_pickle)
  del model
  return Teacher(name, arch, num_classes, variables, fingerprint(variables))


def feature_shapes(teachers: Sequence[Teacher], image_shape: tuple[int, int, int], layer: int = -2
                   ) -> list[tuple[int, ...]]:
  """Shape (H, W, C) of each teacher's feat[layer] (default feat[-2], the last map) on images
  of ``image_shape`` (H, W, C)."""
  shapes = []
  for t in teachers:
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    feats, _ = jax.eval_shape(lambda v, x, m=t.model: m.apply(v, x), t.variables, x)
    shapes.append(tuple(feats[layer].shape[1:]))
  return shapes


def teacher_forward(teachers: Sequence[Teacher], variables: Sequence[PyTree], images: jax.Array,
                    layer: int = -2, dtype: str | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """Eval-mode outputs of every teacher on normalised images: logits (B, T, C), feat[layer] maps
  (``dtype="bfloat16"``: computed in bfloat16, returned float32)."""
  logits, feats = [], []
  for teacher, v in zip(teachers, variables):
    f, z = with_compute_dtype(teacher.model, dtype).apply(v, images, train=False)
    logits.append(z)
    feats.append(f[layer])
  return jnp.stack(logits, axis=1), tuple(feats)


def augmented_teacher_outputs(teachers: Sequence[Teacher], variables: Sequence[PyTree],
                              images_uint8: jax.Array, index: jax.Array, replay: jax.Array | int,
                              seed: int, spec, layer: int = -2):
  """Teachers on the augmented view of (index, replay): what the cache stores (``spec``: the
  dataset's ``DatasetSpec``, for its augmentation and normalisation)."""
  x = normalize(augment_for(spec, images_uint8, index, replay, seed), spec.mean, spec.std)
  return teacher_forward(teachers, variables, x, layer)
