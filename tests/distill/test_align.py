"""distill/align.py: the per-teacher aligners, shapes (PyTorch names) and values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmkd_jax.distill.align import FeatureAligner
from mmkd_jax.teachers import convert


def test_deep_aligner_shapes():
  aligner = FeatureAligner((512, 128), deep=True)
  student = jnp.ones((2, 4, 4, 256))
  teachers = (jnp.ones((2, 4, 4, 512)), jnp.ones((2, 8, 8, 128)))
  variables = aligner.init(jax.random.key(0), student, teachers)
  sd = convert.flax_to_torch(variables)
  assert sd["regressor0.transfer.0.weight"].shape == (128, 256, 1, 1)
  assert sd["regressor0.transfer.3.weight"].shape == (128, 128, 3, 3)
  assert sd["regressor0.transfer.6.weight"].shape == (512, 128, 1, 1)
  assert aligner.apply(variables, student, teachers, mutable=["batch_stats"])[0].shape == (2, 2)


def test_deep_aligner_values_are_the_three_conv_bottleneck():
  """deep=True: 1x1 -> BN -> ReLU -> 3x3 (padding 1) -> BN -> ReLU -> 1x1 -> BN -> ReLU, batch
  statistics, then the per-sample MSE against the teacher map; checked against lax convolutions."""
  rng = np.random.default_rng(0)
  student = jnp.asarray(rng.standard_normal((3, 4, 4, 8)), jnp.float32)
  teacher = jnp.asarray(np.abs(rng.standard_normal((3, 4, 4, 6))), jnp.float32)
  aligner = FeatureAligner((6,), deep=True)
  variables = aligner.init(jax.random.key(0), student, (teacher,))
  got, _ = aligner.apply(variables, student, (teacher,), mutable=["batch_stats"])
  p = variables["params"]["regressor0"]

  def conv_bn_relu(x, conv, bn, pad):
    y = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), [(pad, pad)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
    mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
    return jax.nn.relu((y - mean) / jnp.sqrt(var + 1e-5) * bn["scale"] + bn["bias"])

  x = conv_bn_relu(student, p["transfer.0"], p["transfer.1"], 0)
  x = conv_bn_relu(x, p["transfer.3"], p["transfer.4"], 1)
  x = conv_bn_relu(x, p["transfer.6"], p["transfer.7"], 0)
  expected = jnp.mean(jnp.square(x - teacher).reshape(3, -1), -1)
  np.testing.assert_allclose(np.asarray(got)[:, 0], np.asarray(expected), rtol=1e-5)
