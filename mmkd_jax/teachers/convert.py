"""PyTorch ``state_dict`` <-> Flax variables for every model of the zoo.

The zoo names its Flax submodules after the reference's PyTorch module paths, so the
mapping is structural: the Flax path ``('layer1.0', 'conv1', 'kernel')`` is the PyTorch key
``layer1.0.conv1.weight``. Layouts: conv OIHW (grouped: O, I/g, kh, kw) <-> HWIO,
linear (out, in) <-> (in, out); BatchNorm weight/bias/running_mean/running_var <->
scale/bias (params) and mean/var (batch_stats).
"""

from __future__ import annotations

import pickle
import re
import sys
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mmkd_jax.models import classifier_name, get_model
from mmkd_jax.runs import checkpoint, storage

# (collection, flax leaf name) -> PyTorch parameter name.
_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_IGNORED_TORCH_SUFFIXES = ("num_batches_tracked",)
_MAX_LISTED = 12


class ConversionError(ValueError):
  """A state_dict does not fit the requested architecture."""


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
  try:
    leaf = _LEAF_TO_TORCH[(collection, path[-1])]
  except KeyError:
    raise ConversionError(f"no PyTorch counterpart for Flax variable {collection}/{'/'.join(path)}")
  return ".".join(path[:-1] + (leaf,))


def _to_flax_layout(value: np.ndarray, flax_ndim: int) -> np.ndarray:
  if flax_ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if flax_ndim == 2:  # linear (out, in) -> (in, out)
    return value.T
  return value


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2:
    return value.T
  return value


def _listing(title: str, items: list[str]) -> str:
  shown = ", ".join(items[:_MAX_LISTED])
  more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
  return f"{title} ({len(items)}): {shown}{more}"


def torch_to_flax(state_dict: Mapping[str, Any], template: Mapping[str, Any],
                  dtype: Any = np.float32, keep: str | None = None) -> dict[str, Any]:
  """Converts a PyTorch state_dict into variables shaped like ``template``.

  ``template`` is the model's variables (``model.init`` or its ``jax.eval_shape``), whose
  structure decides which keys are expected. ``keep``: a module (the classifier, ``"fc"``)
  whose variables come from ``template`` (which must then hold arrays) and whose checkpoint
  entries are dropped: a new head. Raises ``ConversionError`` naming every missing key,
  unexpected key and shape mismatch.
  """
  state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
  if keep is not None:
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(keep + ".")}
  flat = flax.traverse_util.flatten_dict(
      {c: template[c] for c in ("params", "batch_stats") if c in template})
  out, used, missing, mismatched = {}, set(), [], []
  for (collection, *path), leaf in flat.items():
    key = _torch_key(collection, tuple(path))
    if keep is not None and key.startswith(keep + "."):
      out[(collection, *path)] = np.asarray(leaf).astype(dtype)
      continue
    if key not in state_dict:
      missing.append(key)
      continue
    used.add(key)
    value = _to_flax_layout(state_dict[key], len(leaf.shape))
    if tuple(value.shape) != tuple(leaf.shape):
      mismatched.append(f"{key}: checkpoint {tuple(state_dict[key].shape)} -> {tuple(value.shape)}, "
                        f"model expects {tuple(leaf.shape)}")
      continue
    out[(collection, *path)] = value.astype(dtype)
  unexpected = sorted(k for k in state_dict
                      if k not in used and not k.endswith(_IGNORED_TORCH_SUFFIXES))
  problems = [_listing(t, items) for t, items in
              (("missing keys", missing), ("unexpected keys", unexpected),
               ("shape mismatches", mismatched)) if items]
  if problems:
    raise ConversionError(
        "the state_dict does not match the model; " + "; ".join(problems) +
        ". Check that the architecture and num_classes match the checkpoint.")
  return flax.traverse_util.unflatten_dict(out)


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of ``torch_to_flax``: PyTorch-layout numpy arrays keyed like a state_dict."""
  flat = flax.traverse_util.flatten_dict(
      {c: variables[c] for c in ("params", "batch_stats") if c in variables})
  return {_torch_key(collection, tuple(path)): _to_torch_layout(np.asarray(v))
          for (collection, *path), v in flat.items()}


def save_pth(state_dict: Mapping[str, Any], path: str) -> None:
  """Writes ``{"model": state_dict}`` (numpy arrays as tensors) to ``path``, the layout the
  reference's loaders read (``torch.load(path)["model"]``). Needs torch (no file without it)."""
  import torch  # pylint: disable=import-outside-toplevel
  with storage.as_path(path).open("wb") as f:
    # a writable copy: torch warns on read-only arrays (what jax.device_get returns)
    torch.save({"model": {k: torch.from_numpy(np.array(v, order="C")) for k, v in state_dict.items()}}, f)


def load_state_dict(path: str, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a state_dict from a ``.pth``/``.pt`` (RepDistiller/MMKD format) or ``.npz`` file.

  A ``.pth`` whose ``'model'`` (or ``'state_dict'``) entry is the state_dict, or a bare
  state_dict, are both accepted; a ``module.`` prefix from DataParallel is removed.
  ``trust_pickle`` allows arbitrary pickled objects (only for files you trust).
  """
  if not storage.exists(path):
    raise FileNotFoundError(f"checkpoint file not found: {path}")
  if path.endswith(".npz"):
    with storage.as_path(path).open("rb") as f, np.load(f, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"reading the PyTorch checkpoint {path} needs torch, which is an optional extra: "
        "`pip install -e '.[torch]'` (or `pip install torch`), or convert it to .npz elsewhere "
        "with {k: v.numpy() for k, v in state_dict.items()}") from e
  try:
    with storage.as_path(path).open("rb") as f:
      obj = torch.load(f, map_location="cpu", weights_only=not trust_pickle)
  except pickle.UnpicklingError as e:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    what = f"a pickled {found.group(1)}" if found else str(e).splitlines()[0][:200]
    raise ConversionError(
        f"{path} holds objects besides tensors ({what}) and refuses to load safely. If you trust the "
        "file, pass trust_pickle=True (--config.trust_pickle=True).") from e
  if isinstance(obj, Mapping):
    for entry in ("model", "state_dict"):
      if entry in obj and isinstance(obj[entry], Mapping):
        obj = obj[entry]
        break
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path} does not contain a state_dict (found {type(obj).__name__})")
  state_dict = {}
  for key, value in obj.items():
    if hasattr(value, "detach"):
      state_dict[key.removeprefix("module.")] = value.detach().cpu().numpy()
  return state_dict


def import_torchvision():
  """torchvision, imported. Some CPU torch / PyPI torchvision wheel pairs (torch 2.13.0+cpu with
  torchvision 0.28.0, the pair ``make torch`` installs) fail to register torchvision's C++
  operators (nms, ...) at import; its models and transforms use none, so the import is retried
  without those fake-kernel registrations."""
  import torch  # pylint: disable=import-outside-toplevel  (optional extra)
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
  except RuntimeError:
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
      del sys.modules[name]
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
      import torchvision  # pylint: disable=import-outside-toplevel
    finally:
      torch.library.register_fake = register_fake
  return torchvision


HEADS = ("keep", "reinit")   # checkpoint_head: the checkpoint's classifier, or a new one


def load_pretrained(arch: str, num_classes: int, path: str, image_shape: tuple[int, int, int],
                    trust_pickle: bool = False, head: str = "keep", initial: Mapping[str, Any] | None = None
                    ) -> tuple[Any, dict[str, Any]]:
  """Builds the model ``arch`` and returns ``(model, variables)`` loaded from ``path``: a
  ``.pth``/``.npz`` state_dict (RepDistiller/MMKD, torchvision, timm) or a run's or export's
  orbax directory (``image_shape``: the input the model will see). ``head="reinit"``: every
  variable but the classifier's, which comes from ``initial`` (the model's own initialisation),
  for a checkpoint of another class count; with ``"keep"`` such a checkpoint is an error saying so."""
  model = get_model(arch, num_classes)
  template = initial if initial is not None else jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
  state_dict = _orbax_state_dict(arch, path) if storage.is_dir(path) else load_state_dict(path, trust_pickle)
  keep = None
  if head == "reinit":
    if initial is None:
      raise ValueError("head='reinit' needs the model's initial variables (initial=...)")
    keep = classifier_name(arch)
  else:
    _check_head(arch, num_classes, path, state_dict)
  try:
    variables = torch_to_flax(state_dict, template, keep=keep)
  except ConversionError as e:
    raise ConversionError(f"cannot load {path} as {arch} with {num_classes} classes: {e}") from e
  return model, jax.tree.map(jnp.asarray, variables)


def check_pretrained(arch: str, num_classes: int, path: str, image_shape: tuple[int, int, int],
                     trust_pickle: bool = False, head: str = "keep") -> None:
  """Refuses, before anything is written, a checkpoint that ``load_pretrained`` would refuse."""
  initial = None  # shapes are enough, but a new head (reinit) takes its values from initial
  if head == "reinit":
    shapes = jax.eval_shape(get_model(arch, num_classes).init, jax.random.key(0),
                            jnp.zeros((1, *image_shape), jnp.float32))
    initial = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  load_pretrained(arch, num_classes, path, image_shape, trust_pickle, head, initial)


def _check_head(arch: str, num_classes: int, path: str, state_dict: Mapping[str, Any]) -> None:
  """A classifier of another class count is named as such, with the way to start a new one."""
  try:
    head = classifier_name(arch)
  except ValueError:
    return
  weight = state_dict.get(f"{head}.weight")
  if weight is not None and np.ndim(weight) == 2 and np.shape(weight)[0] != num_classes:
    raise ConversionError(
        f"{path}: its classifier ({head}) has {np.shape(weight)[0]} classes, the dataset {num_classes}; "
        "set checkpoint_head=reinit to load everything else and start a new classifier "
        "(--config.checkpoint_head=reinit for --config.student_checkpoint; "
        "--config.teachers[i].checkpoint_head=reinit fine-tunes that teacher from it)")


STUDENT_META = "student.json"   # an export directory's record (mmkd_jax.evaluation.student)


def _orbax_state_dict(arch: str, path: str) -> dict[str, np.ndarray]:
  """A run's (best checkpoint) or an export's student in state_dict form."""
  if storage.is_file(storage.join(path, STUDENT_META)):  # an export: its variables/ and student.json
    meta = storage.read_json(storage.join(path, STUDENT_META))
    found = meta["arch"]
    if found == arch:
      abstract = jax.eval_shape(get_model(arch, meta["num_classes"]).init, jax.random.key(0),
                                jnp.zeros((1, *meta["image_shape"]), jnp.float32))
      variables = ocp.StandardCheckpointer().restore(storage.join(path, "variables"), abstract)
  else:  # a run's work directory: the student of its best checkpoint
    state, meta, _, _ = checkpoint.restore_run(path)
    config = meta.get("config") or storage.read_json(storage.join(path, "config.json"))
    found = config["student"]
    variables = {"params": state["params"]["student"], "batch_stats": state["model_state"]["student"]}
  if found != arch:
    raise ConversionError(f"{path} holds a {found}, not a {arch}")
  return flax_to_torch(jax.device_get(variables))
