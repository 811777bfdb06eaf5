"""Mixed precision for any registered model: compute in bfloat16, keep everything else float32.

``with_compute_dtype(model, "bfloat16")`` wraps a model so that its parameters and input are
cast to bfloat16 for the forward pass (convolutions and matmuls run in bfloat16), while the
parameters themselves, their gradients (the cast's transpose returns float32), the optimiser
state and the BatchNorm running statistics stay float32; BatchNorm computes its batch
statistics in float32 (``layers.BatchNorm``). Features and logits come out float32, so every
loss, softmax, Gram matrix and meta network downstream — and the hypergradient's accumulation —
is float32. Initialisation is unchanged (float32), so a bfloat16 run starts from the same
parameters as a float32 run of the same seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")


def _cast_floats(tree: Any, dtype: Any) -> Any:
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@dataclasses.dataclass(frozen=True)
class MixedPrecisionModel:
  """A model whose forward pass runs in ``dtype``; ``init``/``apply`` as flax's, outputs float32."""
  module: nn.Module
  dtype: str

  def init(self, rngs: Any, x: jax.Array, *args, **kwargs) -> Any:
    return self.module.init(rngs, x, *args, **kwargs)

  def init_with_output(self, rngs: Any, x: jax.Array, *args, **kwargs) -> Any:
    return self.module.init_with_output(rngs, x, *args, **kwargs)

  def apply(self, variables: Any, x: jax.Array, *args, mutable: Any = False, **kwargs) -> Any:
    compute = jnp.dtype(self.dtype)
    cast = {k: _cast_floats(v, compute) if k == "params" else v for k, v in variables.items()}
    out = self.module.apply(cast, x.astype(compute), *args, mutable=mutable, **kwargs)
    if mutable:
      out, updated = out
      return _cast_floats(out, jnp.float32), updated
    return _cast_floats(out, jnp.float32)

  def __getattr__(self, name: str) -> Any:  # attributes of the wrapped module (e.g. num_classes)
    if name in ("module", "dtype"):
      raise AttributeError(name)
    return getattr(self.module, name)


def with_compute_dtype(model: Any, dtype: str | None) -> Any:
  """``model`` computing in ``dtype`` (``None``/"float32": the model itself, unchanged)."""
  if dtype in (None, "", "float32"):
    return model
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute dtype {dtype!r} is not one of {COMPUTE_DTYPES}")
  if isinstance(model, MixedPrecisionModel):
    return MixedPrecisionModel(model.module, dtype)
  return MixedPrecisionModel(model, dtype)
