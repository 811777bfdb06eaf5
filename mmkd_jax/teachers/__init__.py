"""Teachers in one place: the frozen models (``core``), PyTorch conversion (``convert``), the
precomputed-output cache (``cache``) and their lifecycle in a run (``lifecycle``: checkpoint
naming, training the missing ones, loading, cache keys, precompute)."""

from mmkd_jax.teachers.core import (Teacher, augmented_teacher_outputs, feature_shapes, fingerprint,
                                    is_complete, load_teacher, save_teacher, teacher_forward)

__all__ = ["Teacher", "augmented_teacher_outputs", "feature_shapes", "fingerprint", "is_complete",
           "load_teacher", "save_teacher", "teacher_forward"]
