"""Distillation methods by name: the interface (``base.Method``), the registry (``register``)
and one module per built-in method. Importing the package registers them all."""

from mmkd_jax.methods.base import (METHODS, LossWeights, Method, MethodSpec, RunInfo, TeacherView,
                                   TeacherWeights, WeightedTermsMethod, build_method, loss_weights, register)
from mmkd_jax.methods.bilevel import BUFFER_SECTION, BilevelMethod, bilevel_fields, check_buffer
from mmkd_jax.methods import none, kd, aver, ebkd, camkd, aekd, fitnet, amtml, bomd, mmkd  # noqa: F401,E402

__all__ = ["BUFFER_SECTION", "METHODS", "BilevelMethod", "LossWeights", "Method", "MethodSpec", "RunInfo", "TeacherView", "TeacherWeights",
           "WeightedTermsMethod", "bilevel_fields", "build_method", "check_buffer", "loss_weights", "register"]
