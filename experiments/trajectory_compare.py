"""Many MMKD steps of the original PyTorch code and of ours from one state, side by side.

    python experiments/trajectory_compare.py --reference /path/to/MMKD \\
        [--teachers DIR_OF_PTH] [--steps 156] [--float 64] [--json out.json]

The per-step checks (``compare_pytorch.py``, the test vectors) prove one plain step and one meta
step's hypergradient; they cannot see a difference that only a run shows (the meta networks' Adam
state over many meta steps, the momentum the look-ahead starts from, the BatchNorm statistics the
rollback leaves, the alternation of training and meta steps). Here both codes start from the same
weights (the original's student, aligners and meta networks, converted to ours) and take the same
steps on the same batches, in float64 by default so that rounding does not hide a real difference:

* training batches: Fashion-MNIST ``train[:5000]`` at 32x32x3 (experiments/fashion_mnist32.py),
  shuffled per epoch, cropped and flipped on the host by our augmentation, normalised once; both
  codes get the very same images;
* teachers: the end-to-end harness's teachers (``--teachers``: their ``.pth`` exports, in the order
  resnet20, wrn_16_2, vgg8) or, without it, random ones; the original's teacher modules compute
  the outputs, rounded to float32 for both codes (ours keeps teacher outputs in float32);
* meta batches: the original's own ``HardBuffer`` (its update inside ``inner_objective``, its
  ``sample``) chooses them; ours takes the very same batch (its buffer is off:
  ``mmkd.hard_buffer=False`` makes the meta step use the batch it is given), so the comparison
  covers the steps and leaves the buffer's random choices aside.

Every meta step prints the relative difference of the meta networks' parameters and of the
student's, and the mean logit weights per teacher of the last training batch in both codes; the
first step where the meta networks differ by more than ``--tolerance`` is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_pytorch  # pylint: disable=wrong-import-position
import pytorch_end_to_end as e2e  # pylint: disable=wrong-import-position

from mmkd_jax import config as config_lib  # pylint: disable=wrong-import-position
from mmkd_jax.data import sources  # pylint: disable=wrong-import-position
from mmkd_jax.data.augment import augment, normalize  # pylint: disable=wrong-import-position
from mmkd_jax.methods import build_method  # pylint: disable=wrong-import-position
from mmkd_jax.models import get_model  # pylint: disable=wrong-import-position
from mmkd_jax.teachers import convert  # pylint: disable=wrong-import-position
from mmkd_jax.training import parallel  # pylint: disable=wrong-import-position
from mmkd_jax.training import setup as train  # pylint: disable=wrong-import-position
from mmkd_jax.training import steps as steps_lib  # pylint: disable=wrong-import-position

SETTING = e2e.SETTINGS["fashion_mnist"]
TEACHERS = tuple((name, arch) for name, arch, _ in SETTING["teachers"])
STUDENT, BATCH, NUM_CLASSES, STEPS_PER_EPOCH = "resnet8", 64, 10, 78
SETTINGS = {"beta": 1.0}   # the end-to-end Fashion-MNIST setting: MMKD's feature weight 1


def training_images(data_dir: str) -> tuple[dict, sources.DatasetSpec]:
  """The end-to-end setting's training split as uint8 arrays and its spec."""
  dataset = e2e.open_setting(SETTING, data_dir)
  return sources.read_records(dataset.train, np.arange(len(dataset.train)), dataset.spec), dataset.spec


def our_config(seed: int) -> ml_collections.ConfigDict:
  """Ours in the original's setting: faithful (its hypergradient, BatchNorm rollback), the batch
  given to the meta step used as it is (the original's buffer chooses it)."""
  c = config_lib.base_config()
  config_lib.set_fields(c, {"method": "mmkd", "batch_size": BATCH, "teacher_source": "precomputed",
                            "faithful": True, "weights.feat": SETTINGS["beta"], "temperature": 4.0,
                            "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                            "meta.lr": 1e-3, "meta.weight_decay": 1e-4, "epochs": 100,
                            "lr_milestones": (99,), "seed": seed})
  c.mmkd.hard_buffer = False
  c.teachers = [config_lib.teacher(name, arch) for name, arch in TEACHERS]
  return config_lib.resolve(c)


def rounded_teachers(loop) -> None:
  """The original's teachers return float32-rounded outputs (ours keeps teacher outputs in float32)."""
  for teacher in loop.teachers:
    forward = teacher.forward

    def rounded(x, *args, _forward=forward, **kwargs):
      feats, logits = _forward(x, *args, **kwargs)
      r = lambda t: t.float().to(x.dtype)
      return [r(f) for f in feats], r(logits)
    teacher.forward = rounded


def teacher_outputs(loop, torch, x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
  """(B, T, C) logits and the T feat[-2] maps (B, H, W, C) of the original's teachers on ``x``."""
  with torch.no_grad():
    outputs = [t(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double(), is_feat=True)
               for t in loop.teachers]
  logits = np.stack([z.numpy() for _, z in outputs], axis=1)
  feats = tuple(f[-2].numpy().transpose(0, 2, 3, 1) for f, _ in outputs)
  return logits, feats


def relative(a: dict, b: dict) -> float:
  """|a - b| / |b| over every tensor together."""
  keys = sorted(b)
  flat = lambda d: np.concatenate([np.asarray(d[k], np.float64).ravel() for k in keys])
  return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


def meta_as_torch(meta) -> dict[str, np.ndarray]:
  out = {}
  for name in ("logits_weight", "feature_weight"):
    out.update({f"{name}.{k}": v for k, v in convert.flax_to_torch({"params": meta[name]}).items()})
  return out


def reference_meta(loop) -> dict[str, np.ndarray]:
  out = {f"logits_weight.{k}": v for k, v in compare_pytorch._state_dict_numpy(loop.weight_logits).items()}  # pylint: disable=protected-access
  out.update({f"feature_weight.{k}": v for k, v in compare_pytorch._state_dict_numpy(loop.weight_feature).items()})  # pylint: disable=protected-access
  return out


def compare(reference: str, teacher_dir: str, data_dir: str, steps: int, seed: int, tolerance: float,
            every: bool = False) -> dict:
  ref = compare_pytorch.import_reference(reference)
  torch = ref.torch
  torch.set_default_dtype(torch.float64)
  arrays, spec = training_images(data_dir)
  host_spec = sources.DatasetSpec("fashion_mnist32", NUM_CLASSES, (32, 32, 3), spec.mean, spec.std,
                                  crop_padding=0, flip=False)   # augmented on the host, below
  with compare_pytorch.cuda_calls_are_identity(torch):
    loop = compare_pytorch.ReferenceLoop(ref, STUDENT, [a for _, a in TEACHERS], NUM_CLASSES, BATCH, seed=seed,
                                         settings=SETTINGS)
    if teacher_dir:
      for module, (name, _) in zip(loop.teachers, TEACHERS):
        module.load_state_dict(torch.load(os.path.join(teacher_dir, name, "student.pth"), map_location="cpu")["model"])
    for module in [loop.model_s, loop.match, loop.weight_logits, loop.weight_feature, *loop.teachers]:
      module.double()
    rounded_teachers(loop)
    recorded = {}
    weight_forward = loop.weight_logits.forward

    def recording(*args, **kwargs):
      out = weight_forward(*args, **kwargs)
      recorded["logits"] = out.detach().numpy().mean(0)
      return out
    loop.weight_logits.forward = recording

    config = our_config(seed)
    teachers = compare_pytorch._teachers(loop, [a for _, a in TEACHERS], NUM_CLASSES, np.float64)  # pylint: disable=protected-access
    teachers = [dataclasses.replace(t, name=name) for t, (name, _) in zip(teachers, TEACHERS)]
    method = build_method(config, train.run_info(config, host_spec, teachers, get_model(STUDENT, NUM_CLASSES), 1))
    our_steps = steps_lib.make_steps(config, method, host_spec, teachers, parallel.data_mesh(), STEPS_PER_EPOCH)
    train_step, meta_step = jax.jit(our_steps.train_step), jax.jit(our_steps.meta_step)

    normalized = jax.jit(lambda images: normalize(images, spec.mean, spec.std))

    def raw_batch(images: np.ndarray, labels: np.ndarray) -> tuple[dict, np.ndarray]:
      """Our raw batch of ``images`` and the normalised images ours computes from it (the
      original's input: the same float32 values)."""
      x = np.asarray(normalized(jnp.asarray(images)))
      logits, feats = teacher_outputs(loop, torch, x)
      raw = {"image": images, "label": labels.astype(np.int32), "index": np.zeros(len(labels), np.int32),
             "replay": np.zeros(len(labels), np.int32), "teacher_logits": logits, "teacher_feat": feats}
      return jax.tree.map(jnp.asarray, raw), x

    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # the original's HardBuffer draws from numpy's global generator
    order = rng.permutation(len(arrays["label"]))
    first, _ = raw_batch(arrays["image"][order[:BATCH]], arrays["label"][order[:BATCH]])
    state = steps_lib.init_state(our_steps, first, seed)
    params, stats, meta = compare_pytorch._converted(loop, method, our_steps.device_batch(first, ()), np.float64)  # pylint: disable=protected-access
    state = state.replace(params=params, model_state=stats, opt_state=our_steps.optimizer.init(params),
                          meta_params=meta, meta_opt_state=our_steps.meta_optimizer.init(meta))
    rows, diverged = [], None
    for step in range(steps):
      epoch, idx = divmod(step, STEPS_PER_EPOCH)
      if idx == 0:
        order = rng.permutation(len(arrays["label"]))
      rows_of_batch = order[idx * BATCH:(idx + 1) * BATCH]
      images = np.asarray(augment(jnp.asarray(arrays["image"][rows_of_batch]), jnp.asarray(rows_of_batch),
                                  epoch, seed))
      labels = arrays["label"][rows_of_batch]
      raw, x = raw_batch(images, labels)
      x_ref = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()
      state, metrics = train_step(state, raw, (), jnp.asarray(epoch, jnp.int32))
      loop.plain_step((x_ref, torch.from_numpy(labels.astype(np.int64))))
      ours_w = np.asarray(metrics[f"{steps_lib.TEACHER_WEIGHTS_PREFIX}logits"])
      ref_w = recorded["logits"]
      if every:
        print(json.dumps({"after_training_step": step + 1, "student": relative(
            compare_pytorch._flat_state(state.params, state.model_state), compare_pytorch._trained_state(loop)),  # pylint: disable=protected-access
            "loss_ours": float(metrics["loss"]), "loss_original": float(loop.last_loss)}), flush=True)
      if idx % 5 != 0:
        continue
      hard_x, hard_y = loop.buffer.sample()
      hard_images = np.rint((hard_x.numpy().transpose(0, 2, 3, 1) * np.asarray(spec.std) + np.asarray(spec.mean))
                            * 255.0).clip(0, 255).astype(np.uint8)
      hard_raw, _ = raw_batch(hard_images, hard_y.numpy())
      state, meta_metrics = meta_step(state, hard_raw, (), jnp.asarray(epoch, jnp.int32))
      loop.meta_step((hard_x, hard_y))
      student = compare_pytorch._flat_state(state.params, state.model_state)  # pylint: disable=protected-access
      ours_meta, ref_meta = meta_as_torch(state.meta_params), reference_meta(loop)
      per_net = {f"{net}_net": relative({k: v for k, v in ours_meta.items() if k.startswith(net)},
                                        {k: v for k, v in ref_meta.items() if k.startswith(net)})
                 for net in ("logits_weight", "feature_weight")}
      row = {"step": step + 1, "meta_networks": relative(ours_meta, ref_meta), **per_net,
             "student": relative(student, compare_pytorch._trained_state(loop)),  # pylint: disable=protected-access
             "logit_weights_ours": [round(float(v), 4) for v in ours_w],
             "logit_weights_original": [round(float(v), 4) for v in ref_w],
             "hypergrad_norm": float(meta_metrics["hypergrad_norm"])}
      rows.append(row)
      print(json.dumps(row), flush=True)
      if diverged is None and row["meta_networks"] > tolerance:
        diverged = row["step"]
  return {"steps": steps, "seed": seed, "float": 64, "first_step_beyond_tolerance": diverged,
          "tolerance": tolerance, "rows": rows}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference", default=os.environ.get("MMKD_REFERENCE", ""))
  parser.add_argument("--teachers", default="", help="directory with <name>/student.pth of each teacher")
  parser.add_argument("--data_dir", default=os.path.join(ROOT, "runs", "pytorch_end_to_end", "fashion_mnist", "tfds"))
  parser.add_argument("--steps", type=int, default=2 * STEPS_PER_EPOCH)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tolerance", type=float, default=1e-6)
  parser.add_argument("--json", default="")
  parser.add_argument("--every", action="store_true", help="also compare the student after every training step")
  args = parser.parse_args(argv)
  if not args.reference:
    print("trajectory_compare: --reference is required (a checkout of github.com/Rorozhl/MMKD)", file=sys.stderr)
    return 2
  jax.config.update("jax_enable_x64", True)
  result = compare(args.reference, args.teachers, args.data_dir, args.steps, args.seed, args.tolerance, args.every)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  print(f"first meta step beyond {args.tolerance:g}: {result['first_step_beyond_tolerance']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
