"""mmkd_jax: multi-teacher knowledge distillation with meta-learning, in JAX/Flax."""

__version__ = "0.1.0"
