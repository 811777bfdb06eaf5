"""The Flax zoo against the PyTorch reference outputs, plus hand-checked building blocks."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmkd_jax import verify
from mmkd_jax.models import get_model, model_names, register_model
from mmkd_jax.errors import UnknownNameError

MODEL_NAMES = model_names()[:21]  # the zoo (registered first)
from mmkd_jax.models.layers import BatchNorm, channel_shuffle
from mmkd_jax.models.shufflenet import _avg_pool_3x3_s2_pad1


@pytest.mark.claim("parity")
@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_matches_reference_eval_train_and_preact(testvectors, arch):
  report = verify.check_model_file(str(testvectors / "models" / f"{arch}.npz"))
  assert report.arch == arch
  names = {c.name for c in report.checks}
  assert {"logits", "train_logits", "feat_0"} <= names
  assert any(n.startswith("train_bn_stats/") for n in names)
  failed = [f"{c.name}: {c.error:.3e} > {c.atol:.1e}" for c in report.checks if not c.ok]
  assert not failed, failed


IMAGENET = ["ResNet18", "ResNet34", "ResNet34x4", "ResNet50", "MobileNetV2_Imagenet", "ShuffleV2_Imagenet",
            "vgg8_imagenet", "vgg13_imagenet"]


@pytest.mark.claim("parity")
@pytest.mark.parametrize("arch", IMAGENET)
def test_imagenet_style_models_match_the_reference(testvectors, arch):
  """The reference's ImageNet-style models (120 classes, 112x112 inputs): eval logits, every
  feature (VGG taps that end before an in-place ReLU included), train-mode logits and statistics."""
  report = verify.check_model_file(str(testvectors / "models_imagenet" / f"{arch}.npz"))
  assert report.arch == arch and {"logits", "train_logits", "feat_0"} <= {c.name for c in report.checks}
  failed = [f"{c.name}: {c.error:.3e} > {c.atol:.1e}" for c in report.checks if not c.ok]
  assert not failed, failed


def test_all_21_architectures_registered():
  assert len(MODEL_NAMES) == 21 and "ShuffleV2" in MODEL_NAMES


@pytest.mark.claim(7)
def test_unknown_model_lists_known_names():
  with pytest.raises(UnknownNameError, match="unknown model 'resnet9'.*resnet8x4.*ShuffleV2"):
    get_model("resnet9", 10)


# feat[-2] (the map MMKD matches) is the last map before pooling: index 4 for VGG / MobileNetV2.
PENULTIMATE = {"resnet8": 3, "wrn_16_1": 3, "vgg8": 4, "MobileNetV2": 4, "ShuffleV1": 3, "ShuffleV2": 3}


@pytest.mark.parametrize("arch", sorted(PENULTIMATE))
@pytest.mark.parametrize("size", [32, 28, 24])
def test_penultimate_feature_is_last_map_at_any_input_size(arch, size):
  """The zoo takes any input size: 28x28 grey images (Fashion-MNIST) give the same feature list,
  with global pooling where the reference's fixed pooling window assumed 32x32."""
  model = get_model(arch, 7)
  x = jnp.zeros((2, size, size, 1 if size == 28 else 3))
  feats, logits = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
  assert logits.shape == (2, 7)
  assert feats[PENULTIMATE[arch]].ndim == 4 and feats[-1].ndim == 2
  assert feats[PENULTIMATE[arch]].shape == feats[-2].shape


def test_global_pooling_equals_the_references_window_at_32():
  """At 32x32 the final map is exactly the reference's pooling window: the same numbers."""
  from mmkd_jax.models.layers import global_avg_pool_flatten  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  np.testing.assert_array_equal(global_avg_pool_flatten(x), nn_avg_pool_8(x))


def nn_avg_pool_8(x):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.avg_pool(x, (8, 8), strides=(8, 8)).reshape(x.shape[0], -1)


def test_a_user_model_registers_and_builds():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class Tiny(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train=False, preact=False):
      f = nn.relu(nn.Conv(4, (3, 3))(x))
      pooled = jnp.mean(f, axis=(1, 2))
      return [f, pooled], nn.Dense(self.num_classes, name="head")(pooled)

  @register_model("tiny_for_test_models", classifier="head")
  def tiny(num_classes, bn_groups=1):
    del bn_groups
    return Tiny(num_classes)

  register_model("tiny_for_test_models", classifier="head")(tiny)  # a re-import is a replacement
  with pytest.raises(ValueError, match="already registered"):
    register_model("tiny_for_test_models")(lambda num_classes, bn_groups=1: Tiny(num_classes))
  model = get_model("tiny_for_test_models", 3)
  x = jnp.zeros((1, 9, 9, 2))
  _, logits = model.apply(model.init(jax.random.key(0), x), x)
  assert logits.shape == (1, 3)


def test_batchnorm_train_mode_matches_pytorch_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(3.0, 2.0, (4, 3, 3, 5)).astype(np.float32)
  bn = BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=True)
  params = {"scale": np.linspace(0.5, 1.5, 5, dtype=np.float32),
            "bias": np.linspace(-1, 1, 5, dtype=np.float32)}
  stats = {"mean": np.full(5, 0.5, np.float32), "var": np.full(5, 2.0, np.float32)}
  y, updated = bn.apply({"params": params, "batch_stats": stats}, x, train=True,
                        mutable=["batch_stats"])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  expected = (x - mean) / np.sqrt(var + 1e-5) * params["scale"] + params["bias"]
  np.testing.assert_allclose(y, expected, atol=1e-5)
  n = 4 * 3 * 3
  np.testing.assert_allclose(updated["batch_stats"]["mean"], 0.9 * 0.5 + 0.1 * mean, rtol=1e-6)
  np.testing.assert_allclose(updated["batch_stats"]["var"], 0.9 * 2.0 + 0.1 * var * n / (n - 1),
                             rtol=1e-6)
  # Eval mode uses the running statistics only.
  y_eval = bn.apply({"params": params, "batch_stats": stats}, x, train=False)
  np.testing.assert_allclose(y_eval, (x - 0.5) / np.sqrt(2.0 + 1e-5) * params["scale"] + params["bias"],
                             atol=1e-5)
  assert set(variables) == {"params", "batch_stats"}


def test_channel_shuffle_matches_nchw_view_permute():
  x = np.arange(2 * 2 * 2 * 6, dtype=np.float32).reshape(2, 2, 2, 6)  # NHWC
  nchw = x.transpose(0, 3, 1, 2)
  reference = nchw.reshape(2, 3, 2, 2, 2).transpose(0, 2, 1, 3, 4).reshape(2, 6, 2, 2)
  np.testing.assert_array_equal(np.asarray(channel_shuffle(x, 3)).transpose(0, 3, 1, 2), reference)


def test_avg_pool_counts_padding():
  x = np.ones((1, 4, 4, 1), np.float32)
  pooled = np.asarray(_avg_pool_3x3_s2_pad1(x))[0, :, :, 0]
  # Corner windows cover 4 real pixels of 9: PyTorch's count_include_pad=True gives 4/9.
  np.testing.assert_allclose(pooled, [[4 / 9, 6 / 9], [6 / 9, 1.0]], rtol=1e-6)


def test_train_mode_updates_running_stats_and_eval_is_pure():
  model = get_model("resnet8", 10)
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updated["batch_stats"])
  assert all(not np.allclose(a, b) for a, b in zip(before, after))
  # Eval mode uses the running statistics, not the batch's: each sample's output is its own
  # (the same whatever else is in the batch), unlike train mode's, and nothing is updated.
  _, logits = model.apply(variables, x)
  _, logits_first3 = model.apply(variables, x[:3])
  np.testing.assert_allclose(logits_first3, logits[:3], rtol=1e-5, atol=1e-6)
  (_, train_logits), _ = model.apply(variables, x[:3], train=True, mutable=["batch_stats"])
  assert not np.allclose(train_logits, logits_first3, rtol=1e-3)
  (_, again), unchanged = model.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_array_equal(again, logits)
  for a, b in zip(jax.tree.leaves(unchanged["batch_stats"]), before):
    np.testing.assert_array_equal(a, b)


def test_grouped_batchnorm_is_per_group_and_one_group_is_global():
  x = np.random.default_rng(1).normal(2.0, 3.0, (8, 2, 2, 3)).astype(np.float32)
  params = {"scale": np.ones(3, np.float32), "bias": np.zeros(3, np.float32)}
  stats = {"mean": np.zeros(3, np.float32), "var": np.ones(3, np.float32)}
  y, upd = BatchNorm(groups=2).apply({"params": params, "batch_stats": stats}, x, train=True,
                                     mutable=["batch_stats"])
  for g in range(2):
    part = x[4 * g:4 * g + 4]
    expected = (part - part.mean((0, 1, 2))) / np.sqrt(part.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(y[4 * g:4 * g + 4], expected, atol=1e-5)
  group_means = [x[:4].mean((0, 1, 2)), x[4:].mean((0, 1, 2))]
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * np.mean(group_means, 0), rtol=1e-5)
  n = 4 * 2 * 2
  group_vars = [x[:4].var((0, 1, 2)) * n / (n - 1), x[4:].var((0, 1, 2)) * n / (n - 1)]
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * np.mean(group_vars, 0), rtol=1e-5)
  y1, _ = BatchNorm(groups=1).apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(y1, (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5), atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 16])
def test_pointwise_conv_is_the_xla_convolution_with_its_gradients(groups):
  """1x1 stride-1 convolutions run as a matmul (layers._pointwise_conv); values and both
  gradients are XLA's convolution's, for plain, grouped and depthwise kernels."""
  from mmkd_jax.models import layers  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(0), (4, 5, 6, 16))
  w = jax.random.normal(jax.random.key(1), (1, 1, 16 // groups, 32 if groups < 16 else 16))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

  def loss(conv_fn, x, w):
    return jnp.sum(jnp.sin(conv_fn(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=numbers,
                                   feature_group_count=groups)))
  mine = jax.value_and_grad(lambda x, w: loss(layers.conv_general_dilated, x, w), (0, 1))(x, w)
  xla = jax.value_and_grad(lambda x, w: loss(jax.lax.conv_general_dilated, x, w), (0, 1))(x, w)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(xla)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


_SHARDED_REPLICAS_SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from mmkd_jax.models.layers import conv
mesh = Mesh(np.array(jax.devices()).reshape(2, 1), ("replica", "data"))
shard = lambda tree: jax.device_put(tree, NamedSharding(mesh, P("replica")))
x = jax.random.normal(jax.random.key(0), (2, 8, 4, 4, 32))
for kernel in (1, 3):
  module = conv(64, kernel, 1, kernel // 2, use_bias=True)
  variables = jax.vmap(lambda a: module.init(jax.random.key(2), a))(x)
  loss = lambda v, a: jnp.sum(jnp.sin(module.apply(v, a)))
  plain = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1))))(variables, x)
  sharded = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)), spmd_axis_name="replica"))(shard(variables), shard(x))
  print(kernel, max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
                    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded))))
"""


def test_zoo_convolutions_are_exact_with_replicas_sharded_over_devices():
  """Replicas on a ('replica', 'data') mesh vmap every convolution with spmd_axis_name; XLA's
  partitioner gets the resulting grouped 1x1 convolution wrong (what broke MMKD's feature
  regressors on the 2 x 4 mesh), the zoo's conv does not."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _SHARDED_REPLICAS_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout
  errors = dict(line.split() for line in out.strip().splitlines())
  assert set(errors) == {"1", "3"} and max(map(float, errors.values())) < 1e-5, errors
