"""mmkd_jax: multi-teacher knowledge distillation with meta-learning, in JAX/Flax.

``mmkd_jax.load_student(path)``: a trained student from a run's work directory or an export
(``mmkd_jax.evaluation.student``)."""

__version__ = "0.2.0"

from mmkd_jax.evaluation.student import load_student  # noqa: E402  (after __version__, which runs.identity reads)

__all__ = ["__version__", "load_student"]
