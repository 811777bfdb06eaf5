"""Distillation methods by name: the interface (``base.Method``), the registry (``register``),
the bi-level training strategy (``bilevel``) and one module per built-in method, each registered
as a user's method is (importing the package imports them)."""

from mmkd_jax.methods.base import (METHODS, LossWeights, Method, MethodOutputs, MethodSpec, RunInfo, TeacherView,
                                   TeacherWeights, WeightedTermsMethod, build_method, loss_weights, register)
from mmkd_jax.methods.bilevel import BilevelMethod
from mmkd_jax.methods import none, kd, aver, ebkd, camkd, aekd, fitnet, amtml, bomd, mmkd  # noqa: F401,E402

__all__ = ["METHODS", "BilevelMethod", "LossWeights", "Method", "MethodOutputs", "MethodSpec", "RunInfo", "TeacherView", "TeacherWeights",
           "WeightedTermsMethod", "build_method", "loss_weights", "register"]
