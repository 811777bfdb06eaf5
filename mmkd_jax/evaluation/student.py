"""Getting the trained student out: load-and-predict, export, and evaluation without teachers.

    student = mmkd_jax.load_student("runs/digits")          # a run's work directory, or an export
    probabilities = student.predict(images_uint8)           # (N, H, W, C) uint8 or [0, 1] floats
    mmkd_jax.evaluation.student.export_student("runs/digits", "runs/digits/export")

An export directory holds ``student.json`` (architecture, classes, input shape, normalisation,
the run's accuracy and which split chose the checkpoint), ``variables/`` (an orbax checkpoint of
the student's parameters and BatchNorm statistics alone), ``student.npz`` (the same arrays in
PyTorch layout, keyed like a ``state_dict``) and, when torch is installed, ``student.pth`` (a
``state_dict`` loadable into the reference's own model class of that architecture).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import orbax.checkpoint as ocp

from mmkd_jax.data import sources
from mmkd_jax.data.augment import normalize
from mmkd_jax.evaluation import evaluate as evaluation
from mmkd_jax.models import get_model
from mmkd_jax.registry import import_plugins
from mmkd_jax.runs import checkpoint, storage
from mmkd_jax.teachers import convert
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.training import parallel

STUDENT_META = convert.STUDENT_META
EVALUATION_FILE = "evaluation.json"   # mode=evaluate's latest result in the work directory
EVALUATION_HISTORY = "evaluations.jsonl"  # each mode=evaluate's result, one per line


@dataclasses.dataclass
class Student:
  """A trained student: its architecture, variables and the preprocessing it was trained with."""
  arch: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  variables: Any
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  input_note: str = ""   # how a raw image became one of its training images (the dataset's)

  def __post_init__(self):
    model = get_model(self.arch, self.num_classes)
    mean, std = self.mean, self.std

    @jax.jit
    def logits(variables, images):
      if images.dtype == jnp.uint8:
        x = normalize(images, mean, std)
      else:  # floats in [0, 1]
        x = (images.astype(jnp.float32) - jnp.asarray(mean)) / jnp.asarray(std)
      return model.apply(variables, x, train=False)[1]
    self._logits = logits

  def logits(self, images: np.ndarray, batch_size: int = 256, resize: bool = False) -> np.ndarray:
    """Eval-mode logits of (N, H, W, C) images, uint8 in [0, 255] or floats in [0, 1]. Images of
    another size are refused, saying how the training images were made; ``resize=True`` resizes
    them bilinearly (and repeats grey over RGB) instead."""
    images = np.asarray(images)
    if images.dtype != np.uint8 and images.size and (np.nanmax(images) > 1.0 or np.nanmin(images) < 0.0):
      raise ValueError(f"float images must be in [0, 1] (got values in [{np.nanmin(images):g}, {np.nanmax(images):g}]); "
                       "pass uint8 images in [0, 255], or divide by 255")
    if images.ndim == 3:  # one (H, W, C) image, or (N, H, W) grey images
      images = images[None] if images.shape[-1] in (1, 3, 4) else images[..., None]
    if tuple(images.shape[1:]) != tuple(self.image_shape):
      if not resize:
        made = f" Its training images were {self.input_note}." if self.input_note else ""
        raise ValueError(f"the student takes images of shape {self.image_shape}, got {images.shape[1:]}.{made} "
                         "Prepare them the same way, or pass resize=True to resize them bilinearly (grey repeated "
                         "over RGB)")
      images = resized(images, self.image_shape)
    out = []
    for lo in range(0, len(images), batch_size):
      chunk = images[lo:lo + batch_size]
      pad = batch_size - len(chunk) if len(images) > batch_size else 0  # one compiled shape per run
      padded = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
      out.append(np.asarray(self._logits(self.variables, jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out)

  def predict(self, images: np.ndarray, batch_size: int = 256, resize: bool = False) -> np.ndarray:
    """Class probabilities (N, classes); ``resize``: as in ``logits``."""
    return np.asarray(jax.nn.softmax(self.logits(images, batch_size, resize), axis=-1))


def resized(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """(N, h, w, c) images at (H, W, C): bilinear, grey repeated over RGB, an alpha channel dropped;
  uint8 stays uint8 (rounded), floats stay floats."""
  height, width, channels = shape
  if images.shape[-1] == 4 and channels == 3:
    images = images[..., :3]
  if images.shape[-1] == 1 and channels == 3:
    images = np.repeat(images, 3, axis=-1)
  if images.shape[-1] == 3 and channels == 1:
    images = np.mean(images.astype(np.float32), axis=-1, keepdims=True)
  out = jax.image.resize(jnp.asarray(images, jnp.float32), (len(images), height, width, channels), "bilinear")
  if np.asarray(images).dtype == np.uint8:
    return np.asarray(jnp.clip(jnp.round(out), 0, 255)).astype(np.uint8)
  return np.clip(np.asarray(out), 0.0, 1.0)


def student_from_workdir(workdir: str, which: str = "best") -> Student:
  """The student of a run's best (or latest) checkpoint, with its run's preprocessing. An
  unreadable best checkpoint falls back to the latest readable one, saying so on stderr."""
  state, meta, step, which = checkpoint.restore_run(workdir, which)
  if "config" not in meta and storage.is_file(storage.join(workdir, "config.json")):
    meta["config"] = storage.read_json(storage.join(workdir, "config.json"))
  if "config" not in meta:
    raise FileNotFoundError(f"{workdir}: neither its checkpoints nor a config.json record its config")
  config = meta["config"]
  import_plugins(config.get("imports", ()))
  spec = sources.dataset_spec(ml_collections.ConfigDict(config))
  variables = {"params": state["params"]["student"], "batch_stats": state["model_state"]["student"]}
  history = meta.get("history", [])
  record = next((r for r in history if r.get("epoch") == meta.get("best_epoch")), history[-1] if history else {})
  info = {"workdir": storage.absolute(workdir), "step": step, "method": config["method"],
          "dataset": config["dataset"], "selected_on": f"{meta.get('best_chosen_on', spec.test_split)} ({'best epoch' if which == 'best' else 'latest'})",
          "top1": record.get("test/top1", record.get("val/top1")), "epoch": record.get("epoch"),
          "teachers": [t["name"] for t in config.get("teachers", [])]}
  info["config"] = config
  return Student(config["student"], spec.num_classes, tuple(spec.image_shape), tuple(spec.mean), tuple(spec.std),
                 jax.tree.map(jnp.asarray, variables), info, sources.input_note(config["dataset"]))


def load_student(path: str, which: str = "best") -> Student:
  """A student from any form a run or an export has: a run's work directory (its ``which``
  checkpoint), an export directory, its ``student.npz`` / ``student.pth``, or its orbax
  ``variables/``. An export of a plug-in model imports the modules its ``student.json`` records."""
  path = storage.absolute(path)
  is_file = storage.is_file(path)
  export_dir = storage.parent(path) if is_file or storage.basename(path) == "variables" else path
  meta_path = storage.join(export_dir, STUDENT_META)
  if not storage.is_file(meta_path):
    if is_file or export_dir != path:
      raise FileNotFoundError(f"{path}: no {STUDENT_META} beside it; load the export directory it came from "
                              "(written by mode=export), or a run's work directory")
    return student_from_workdir(path, which)
  meta = storage.read_json(meta_path)
  import_plugins(meta.get("imports", ()))
  image_shape = tuple(meta["image_shape"])
  if is_file:
    _, variables = convert.load_pretrained(meta["arch"], meta["num_classes"], path, image_shape)
  else:
    model = get_model(meta["arch"], meta["num_classes"])
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    variables = ocp.StandardCheckpointer().restore(storage.join(export_dir, "variables"), abstract)
  return Student(meta["arch"], meta["num_classes"], image_shape, tuple(meta["mean"]),
                 tuple(meta["std"]), variables, meta.get("run", {}), meta.get("input", {}).get("made", ""))


def export_student(workdir: str, out_dir: str, which: str = "best",
                   formats: Sequence[str] = ("orbax", "npz", "pth")) -> dict[str, str]:
  """Writes the student of ``workdir`` to ``out_dir``; returns the written paths. ``pth`` needs
  torch (the optional extra) and is skipped, with a note in ``student.json``, without it."""
  student = student_from_workdir(workdir, which)
  out_dir = storage.absolute(out_dir)
  storage.makedirs(out_dir)
  written: dict[str, str] = {}
  host = jax.device_get(student.variables)
  if "orbax" in formats:
    target = storage.join(out_dir, "variables")
    if storage.exists(target):
      raise FileExistsError(f"{target} exists; export into a new directory")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, host)
    checkpointer.wait_until_finished()
    written["orbax"] = target
  state_dict = convert.flax_to_torch(host)
  if "npz" in formats:
    written["npz"] = storage.join(out_dir, "student.npz")
    with storage.as_path(written["npz"]).open("wb") as f:
      np.savez(f, **state_dict)
  notes = []
  if "pth" in formats:
    try:
      path = storage.join(out_dir, "student.pth")
      convert.save_pth(state_dict, path)
      written["pth"] = path
    except Exception as e:  # pylint: disable=broad-except  (torch missing, or a CUDA-only wheel)
      notes.append(f"student.pth not written: torch unavailable ({type(e).__name__}); pip install -e '.[torch]'")
  meta = {"arch": student.arch, "num_classes": student.num_classes, "image_shape": list(student.image_shape),
          "input": {"shape": list(student.image_shape), "dtype": "uint8 in [0, 255] or float in [0, 1]",
                    "dataset": student.info.get("dataset", ""), "made": student.input_note},
          "imports": [os.path.abspath(m) if m.endswith(".py") else m  # found from anywhere
                      for m in student.info.get("config", {}).get("imports", ())],
          "mean": list(student.mean), "std": list(student.std), "layout": "flax NHWC (variables/), PyTorch NCHW (npz, pth)",
          "run": {k: v for k, v in student.info.items() if k != "config"}, "files": {k: storage.basename(v) for k, v in written.items()}, "notes": notes}
  written["meta"] = storage.join(out_dir, STUDENT_META)
  storage.write_json(written["meta"], meta)  # last: an export directory is complete once it exists
  return written


def evaluate_workdir(config, workdir: str, which: str = "best") -> dict[str, Any]:
  """``mode=evaluate``: the run's student on ``config``'s evaluation split through
  ``config.evaluators``, written to ``<workdir>/evaluation.json``; no teachers or cache are
  needed. Teachers configured and on disk are reported too (accuracy, ensemble, and the
  student's top-1 agreement and KL with each)."""
  student = student_from_workdir(workdir, which)
  dataset = sources.open_dataset(config)
  if (dataset.spec.num_classes, tuple(dataset.spec.image_shape)) != (student.num_classes, student.image_shape):
    raise ValueError(f"the student of {workdir} takes {student.image_shape} images of {student.num_classes} "
                     f"classes; config.dataset {config.dataset!r} has {dataset.spec.image_shape} and "
                     f"{dataset.spec.num_classes}")
  teachers = []
  if config.teachers:
    try:
      teachers = teacher_stages.load_teachers(config, dataset.spec)
    except FileNotFoundError as e:
      print(f"note: evaluating the student alone ({e})")
  names = tuple(config.evaluators) + (("teachers",) if teachers and "teachers" not in config.evaluators else ())
  result = evaluation.student_against_teachers(student, teachers, dataset.test, dataset.spec, config.eval_batch_size,
                                               parallel.data_mesh(), names, config.feature_layer)
  result.update(split=dataset.spec.test_split, step=student.info["step"], checkpoint=which,
                evaluators=list(names))
  top5 = f", top-5 {result['top5']:.2f}%" if "top5" in result else ""
  extra = "".join(f", {k} {result[k]:.4f}" for k in ("ece",) if k in result)
  print(f"{which} checkpoint (step {result['step']}) on {result['split']}: top-1 {result['top1']:.2f}%{top5}, "
        f"loss {result['loss']:.4f}{extra}"
        + "".join(f"; {t.name}: top-1 {result['teacher/' + t.name]:.2f}%, agreement "
                  f"{result['agreement/' + t.name]:.2f}%, KL {result['kl/' + t.name]:.4f}" for t in teachers))
  if jax.process_index() == 0:
    record = {k: _without_nan(v) for k, v in result.items()}
    path = storage.join(workdir, EVALUATION_FILE)
    storage.write_text(path, json.dumps(record, indent=2, allow_nan=False))
    history = storage.join(workdir, EVALUATION_HISTORY)  # every evaluation kept, whatever it measured
    earlier = storage.read_text(history) if storage.is_file(history) else ""
    storage.write_text(history, earlier + json.dumps(dict(record, time=round(time.time(), 3)), allow_nan=False) + "\n")
    print(f"written to {path} (and appended to {EVALUATION_HISTORY}, which keeps every evaluation)")
  return result


def _without_nan(value: Any) -> Any:
  """JSON has no NaN: an undefined number (a class absent from the split) is null."""
  if isinstance(value, list):
    return [_without_nan(v) for v in value]
  return None if isinstance(value, float) and not np.isfinite(value) else value
