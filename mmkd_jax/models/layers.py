"""Building blocks shared by the CIFAR zoo, with PyTorch semantics.

Module names inside the networks mirror the PyTorch module paths of the reference
(``layer1.0.conv1`` ...), so a Flax variable path joined with dots *is* the PyTorch
``state_dict`` prefix; ``mmkd_jax.teachers.convert`` relies on this.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# PyTorch initialises convolutions of this zoo with kaiming_normal_(mode='fan_out').
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight.
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_linear_bias_init(key: Array, shape: Sequence[int], dtype: Any, fan_in: int) -> Array:
  bound = 1.0 / np.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class BatchNorm(nn.Module):
  """BatchNorm2d/1d exactly as PyTorch computes it.

  Train mode normalises with the biased batch variance and updates
  ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* batch
  variance for ``running_var`` (flax's own BatchNorm uses the biased one). ``momentum``
  uses PyTorch's convention (0.1).

  ``groups > 1`` splits the batch into that many equal consecutive groups with their own
  statistics: under data parallelism with one group per device this is PyTorch DDP's
  per-device BatchNorm, computed inside global-batch code without communication. The running
  statistics then move towards the mean over groups of each group's (unbiased) statistics.
  ``groups = 1`` is BatchNorm over the whole (global) batch, i.e. synchronised BatchNorm.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5
  groups: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    # Statistics and normalisation in float32 also when the network computes in bfloat16
    # (models/precision.py); a no-op in float32.
    compute_dtype = x.dtype
    stats_dtype = jnp.promote_types(compute_dtype, jnp.float32)
    x, scale, bias = x.astype(stats_dtype), scale.astype(stats_dtype), bias.astype(stats_dtype)
    if not train:
      inv = jax.lax.rsqrt(running_var.value + self.epsilon) * scale
      return ((x - running_mean.value) * inv + bias).astype(compute_dtype)
    groups = self.groups if x.shape[0] % self.groups == 0 else 1
    grouped = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    reduce_axes = tuple(range(1, grouped.ndim - 1))
    mean = jnp.mean(grouped, axis=reduce_axes, keepdims=True)
    # Two-pass variance: as accurate as PyTorch's, unlike E[x^2] - E[x]^2 for large means.
    var = jnp.mean(jnp.square(grouped - mean), axis=reduce_axes, keepdims=True)
    if not self.is_initializing():
      count = int(np.prod([grouped.shape[a] for a in reduce_axes]))
      unbiased = var * (count / max(count - 1, 1))
      m = self.momentum
      batch_mean = jax.lax.stop_gradient(jnp.mean(mean, axis=(0,) + reduce_axes))
      batch_var = jax.lax.stop_gradient(jnp.mean(unbiased, axis=(0,) + reduce_axes))
      running_mean.value = (1 - m) * running_mean.value + m * batch_mean
      running_var.value = (1 - m) * running_var.value + m * batch_var
    y = (grouped - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.reshape(x.shape).astype(compute_dtype)


# Below this many output positions per image, XLA:CPU's own kernel-gradient convolution is as
# fast as the patch matmul (measured: 32x32 maps 3.1x faster, 16x16 1.1x, 8x8 0.9x).
_PATCH_GRADIENT_MIN_POSITIONS = 256


def _conv(x: Array, w: Array, strides, padding) -> Array:
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_by_patches(x: Array, w: Array, strides, padding) -> Array:
  """The same convolution as one matmul over (kh * kw * C)-wide patches (im2col)."""
  kh, kw, c, k = w.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  out_h = (xp.shape[1] - kh) // strides[0] + 1
  out_w = (xp.shape[2] - kw) // strides[1] + 1
  patches = jnp.concatenate(
      [xp[:, i:i + strides[0] * (out_h - 1) + 1:strides[0], j:j + strides[1] * (out_w - 1) + 1:strides[1], :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum("nhwc,ck->nhwk", patches, w.reshape(kh * kw * c, k))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_patch_gradient(x: Array, w: Array, strides, padding) -> Array:
  """XLA's convolution, whose kernel tangent (hence, transposed, the kernel gradient) is the
  patch matmul: XLA:CPU computes large-map kernel gradients 3x slower than the matmul does.
  Forward and input-gradient stay XLA's own; every order of derivative keeps this rule."""
  return _conv(x, w, strides, padding)


@_conv_patch_gradient.defjvp
def _conv_patch_gradient_jvp(strides, padding, primals, tangents):
  (x, w), (dx, dw) = primals, tangents
  y = _conv_patch_gradient(x, w, strides, padding)
  return y, _conv_patch_gradient(dx, w, strides, padding) + _conv_by_patches(x, dw, strides, padding)


def _pointwise_conv(x: Array, w: Array, groups: int, precision=None, preferred_element_type=None) -> Array:
  """A 1x1 stride-1 convolution (HWIO kernel, ``groups`` channel groups) as a matmul.

  Why not XLA's convolution: under ``vmap(..., spmd_axis_name=...)`` with the vmapped axis sharded
  (replicas on a ('replica', 'data') mesh) the vmapped kernel turns the convolution into a grouped
  one, and the SPMD partitioner of jaxlib 0.10 computes that wrongly for 1x1 stride-1 kernels
  (relative error ~1, forward and both gradients; 3x3, strided and depthwise convolutions are
  exact: tests/models/test_models.py). A dot_general partitions correctly."""
  b, h, wd, c = x.shape
  out = w.shape[-1]
  grouped = x.reshape(b, h, wd, groups, c // groups)
  kernel = w.reshape(c // groups, groups, out // groups)
  y = jnp.einsum("bhwgi,igo->bhwgo", grouped, kernel, precision=precision,
                 preferred_element_type=preferred_element_type)
  return y.reshape(b, h, wd, out)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None, preferred_element_type=None) -> Array:
  """``lax.conv_general_dilated`` for ``nn.Conv``: a 1x1, stride-1, unpadded convolution is the
  matmul it is (``_pointwise_conv``), and on the CPU plain (ungrouped, undilated) 2-D convolutions
  on large maps get the patch-matmul kernel gradient; the same values up to rounding."""
  nhwc = lhs.ndim == 4 and dimension_numbers == jax.lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  undilated = all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
  unpadded = padding in ("VALID", "SAME") if isinstance(padding, str) else all(int(p) == 0 for pair in padding for p in pair)
  if (nhwc and undilated and unpadded and rhs.shape[:2] == (1, 1) and batch_group_count == 1
      and all(int(s) == 1 for s in window_strides)):
    return _pointwise_conv(lhs, rhs, feature_group_count, precision, preferred_element_type)
  plain = (jax.default_backend() == "cpu" and nhwc and undilated and feature_group_count == 1
           and batch_group_count == 1 and not isinstance(padding, str))
  if plain:
    strides = tuple(int(s) for s in window_strides)
    pads = tuple((int(a), int(b)) for a, b in padding)
    positions = ((lhs.shape[1] + sum(pads[0]) - rhs.shape[0]) // strides[0] + 1) * (
        (lhs.shape[2] + sum(pads[1]) - rhs.shape[1]) // strides[1] + 1)
    if positions >= _PATCH_GRADIENT_MIN_POSITIONS and precision is None:
      return _conv_patch_gradient(lhs, rhs, strides, pads)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                      dimension_numbers, feature_group_count, batch_group_count,
                                      precision, preferred_element_type)


def torch_uniform(fan_in: int) -> Callable:
  """PyTorch's default init of a conv / linear layer's weight and bias, U(-1/sqrt(fan_in),
  1/sqrt(fan_in)) (kaiming_uniform_ with a = sqrt(5)); ``fan_in`` as PyTorch counts it
  (weight.size(1) x kernel area: for a transposed conv, its *output* channels)."""
  bound = 1.0 / np.sqrt(fan_in)
  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
         use_bias: bool = False, name: str | None = None, torch_default_from: int = 0) -> nn.Conv:
  """A Conv2d with PyTorch's explicit symmetric padding; kaiming-normal (fan_out) weights and zero
  bias as this zoo's models initialise them, or with ``torch_default_from`` = the input channels
  PyTorch's default init of an ``nn.Conv2d`` left as built (``torch_uniform``)."""
  inits = {"kernel_init": conv_kernel_init}
  if torch_default_from:
    uniform = torch_uniform(torch_default_from // groups * kernel * kernel)
    inits = {"kernel_init": uniform, "bias_init": uniform}
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                 use_bias=use_bias, conv_general_dilated=conv_general_dilated, name=name, **inits)


def dense(features: int, fan_in: int, name: str | None = None) -> nn.Dense:
  """nn.Linear with PyTorch's default initialisation (both bounds 1/sqrt(fan_in))."""
  def bias_init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    return _torch_linear_bias_init(key, shape, dtype, fan_in)
  return nn.Dense(features, kernel_init=dense_kernel_init, bias_init=bias_init, name=name)


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """``F.adaptive_avg_pool2d(x, size)`` for NHWC maps (PyTorch's window boundaries)."""
  h, w = x.shape[1], x.shape[2]
  if (h, w) == (size, size):
    return x
  if h % size == 0 and w % size == 0:
    return x.reshape(x.shape[0], size, h // size, size, w // size, x.shape[3]).mean(axis=(2, 4))
  rows = []
  for i in range(size):
    r0, r1 = (i * h) // size, -(-((i + 1) * h) // size)
    cols = []
    for j in range(size):
      c0, c1 = (j * w) // size, -(-((j + 1) * w) // size)
      cols.append(x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


def global_avg_pool_flatten(x: Array) -> Array:
  """Average over the whole map, flattened: the reference's ``F.avg_pool2d(x, k)`` + ``view`` at
  the input size it was written for (its k is the final map's size there), and global pooling at
  any other input size (where the reference's fixed k would fail or leave a spatial grid)."""
  x = nn.avg_pool(x, (x.shape[1], x.shape[2]), strides=(x.shape[1], x.shape[2]))
  return x.reshape(x.shape[0], -1)


def channel_shuffle(x: Array, groups: int) -> Array:
  """PyTorch's ``view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)`` channel shuffle, in NHWC."""
  n, h, w, c = x.shape
  return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)
