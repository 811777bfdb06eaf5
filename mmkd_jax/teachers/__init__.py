"""Teachers in one place: the frozen models (``core``), PyTorch conversion (``convert``) and the
precomputed-output cache (``cache``). The configured teachers of a run (training the missing
ones with the trainer, loading, the cache key, precompute) sit a floor up, in
``mmkd_jax.teachers.stages``."""

from mmkd_jax.teachers.core import (Teacher, augmented_teacher_outputs, feature_shapes, fingerprint,
                                    is_complete, load_teacher, save_teacher, teacher_forward)

__all__ = ["Teacher", "augmented_teacher_outputs", "feature_shapes", "fingerprint", "is_complete",
           "load_teacher", "save_teacher", "teacher_forward"]
