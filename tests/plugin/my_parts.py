"""A user's own dataset, model and weighting method, registered from outside the package."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from mmkd_jax.data import register_dataset
from mmkd_jax.distill import losses
from mmkd_jax.methods import TeacherWeights, WeightedTermsMethod, loss_weights, register
from mmkd_jax.methods.base import apply_student, kd_matrix
from mmkd_jax.models import register_model


# -- a dataset: any TFDS builder; image shape and classes come from its features ----------
# No mean/std given: computed from the train split. No flips: they would move the quadrant.
@register_dataset("bright_quadrant", offline=True, flip=False)
class BrightQuadrant(tfds.core.GeneratorBasedBuilder):
  """12x12 RGB noise with one brighter quadrant; the label is which one."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(12, 12, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=4)}), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 256), "test": self._generate_examples(1, 64)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      label = i % 4
      image = rng.integers(0, 120, (12, 12, 3))
      r, c = divmod(label, 2)
      image[6 * r:6 * r + 6, 6 * c:6 * c + 6] += 120
      yield i, {"image": image.astype(np.uint8), "label": label}


# -- a model: returns (feature list ending with the pooled vector, logits) -----------------
class TinyNet(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False, preact=False):
    del preact
    f1 = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(nn.Conv(8, (3, 3), name="conv1")(x)))
    f2 = nn.relu(nn.Conv(16, (3, 3), strides=2, name="conv2")(f1))
    pooled = jnp.mean(f2, axis=(1, 2))
    return [f1, f2, pooled], nn.Dense(self.num_classes, name="head")(pooled)


@register_model("tiny_net", classifier="head")
def tiny_net(num_classes, bn_groups=1):
  del bn_groups  # flax's own BatchNorm: statistics over the whole batch
  return TinyNet(num_classes)


# -- a weighting method: its math, its module, its config section, its registration --------
def confidence_weights(teacher_logits, sharpness):
  """Per sample, teachers weighted by softmax over teachers of sharpness * their max probability."""
  confidence = jnp.max(jax.nn.softmax(teacher_logits, axis=-1), axis=-1)  # (B, T)
  return jax.nn.softmax(sharpness * confidence, axis=-1)


@dataclasses.dataclass(frozen=True)
class ConfidentKD(WeightedTermsMethod):
  sharpness: float = 1.0

  def compute_terms(self, params, state, meta_params, batch):
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    w = confidence_weights(batch["teacher_logits"], self.sharpness)
    kd = jnp.mean(jnp.sum(w * kd_matrix(logits, batch["teacher_logits"], self.temperature), -1))
    terms = {"ce": losses.cross_entropy(logits, batch["label"]), "kd": kd}
    return terms, dict(state, student=stats), {"logits": logits, "teacher_weights": TeacherWeights(logits=w)}


@register("confident_kd", terms={"ce": 1.0, "kd": 1.0}, section={"sharpness": 5.0},
          presets={"bright_quadrant": {"temperature": 2.0}})
def build(config, run):
  """Teachers weighted by their confidence."""
  return ConfidentKD(run, loss_weights(config), config.temperature,
                     sharpness=config.confident_kd.sharpness)
