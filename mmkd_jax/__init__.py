"""mmkd_jax: multi-teacher knowledge distillation with meta-learning, in JAX/Flax."""

__version__ = "0.2.0"


def load_student(path: str, which: str = "best"):
  """A trained student from a run's work directory or an export (see ``mmkd_jax.student``)."""
  from mmkd_jax.student import load_student as load  # pylint: disable=import-outside-toplevel
  return load(path, which)
