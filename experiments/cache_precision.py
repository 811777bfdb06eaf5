"""What the teacher cache's storage dtypes cost: the KD and feature losses computed from cached
teacher outputs against the live float32 teachers, and the teachers' argmax.

    python experiments/cache_precision.py --config configs/digits.py --student_workdir runs/digits

For ``--examples`` training images at replay 0 it runs the configured (trained) teachers live in
float32, rounds their logits and feature maps through each storage dtype, and reports per dtype:
the relative error of the batch-mean KD term ``T^2 KL(p_t || p_s)`` (the student's logits from
``--student_workdir``'s best checkpoint, else the teachers' own ensemble mean), of the feature
MSE against a perturbed copy of the map, the fraction of examples whose teacher argmax changes,
and the bytes one example costs per replay. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax import config as config_lib
from mmkd_jax.data import sources
from mmkd_jax.distill import losses
from mmkd_jax.teachers import stages as teacher_stages
from mmkd_jax.teachers import augmented_teacher_outputs, cache, feature_shapes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--set", action="append", default=[], help="config override field=value")
  parser.add_argument("--student_workdir", default="")
  parser.add_argument("--examples", type=int, default=1024)
  args = parser.parse_args(argv)
  config = config_lib.validate(config_lib.load(args.config, None, args.set))
  dataset = sources.open_dataset(config)
  teachers = teacher_stages.load_teachers(config, dataset.spec)
  n = min(args.examples, len(dataset.train))
  indices = np.arange(n)
  images = sources.read_records(dataset.train, indices, dataset.spec)["image"]
  forward = jax.jit(lambda v, x, i: augmented_teacher_outputs(teachers, v, x, i, 0, config.augmentation_seed,
                                                              dataset.spec, config.feature_layer))
  logits, feats = jax.device_get(forward(tuple(t.variables for t in teachers), images, indices.astype(np.int32)))
  if args.student_workdir:
    from mmkd_jax.evaluation.student import load_student  # pylint: disable=import-outside-toplevel
    from mmkd_jax.data.augment import augment_for  # pylint: disable=import-outside-toplevel
    student = load_student(args.student_workdir)
    views = np.asarray(augment_for(dataset.spec, jnp.asarray(images), jnp.asarray(indices), 0, config.augmentation_seed))
    student_logits = student.logits(views)
    source = f"the student of {args.student_workdir}"
  else:
    student_logits = logits.mean(axis=1)
    source = "the teachers' ensemble mean (no --student_workdir)"
  rng = np.random.default_rng(0)

  def terms(l, f):
    kd = float(jnp.mean(losses.kd_per_sample(jnp.asarray(student_logits)[:, None, :], jnp.asarray(l), config.temperature)))
    target = [x * (1 + 0.05 * rng.standard_normal(x.shape)) for x in feats]
    mse = float(np.mean([np.mean((np.asarray(a, np.float64) - b) ** 2) for a, b in zip(f, target)]))
    return kd, mse

  state = rng.bit_generator.state
  kd_live, mse_live = terms(logits, feats)
  shapes = feature_shapes(teachers, dataset.spec.image_shape, config.feature_layer)
  values_logits = logits.shape[1] * logits.shape[2]
  values_feats = sum(int(np.prod(s)) for s in shapes)
  print(f"{len(teachers)} teachers on {n} {config.dataset} images; KD against {source}; T = {config.temperature}")
  print("| storage | KD rel. error | feature MSE rel. error | teacher argmax changed | bytes / example / replay |")
  print("|---|---|---|---|---|")
  for logits_dtype, feat_dtype in (("float32", "float32"), ("float32", "bfloat16"), ("float32", "float16"),
                                   ("bfloat16", "bfloat16"), ("float16", "float16")):
    rng.bit_generator.state = state
    stored_logits = cache.from_storage(cache.to_storage(logits, logits_dtype), logits_dtype)
    stored_feats = [cache.from_storage(cache.to_storage(f, feat_dtype), feat_dtype) for f in feats]
    kd, mse = terms(stored_logits, stored_feats)
    changed = float(np.mean(np.argmax(stored_logits, -1) != np.argmax(logits, -1)))
    size = (values_logits * np.dtype(cache.STORAGE_DTYPES[logits_dtype]).itemsize
            + values_feats * np.dtype(cache.STORAGE_DTYPES[feat_dtype]).itemsize)
    print(f"| logits {logits_dtype}, features {feat_dtype} | {abs(kd - kd_live) / kd_live:.2e} | "
          f"{abs(mse - mse_live) / mse_live:.2e} | {100 * changed:.3f}% | {size:,} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
