"""Shared pieces of the reference checks: an output's error against its tolerance."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np


@dataclasses.dataclass
class OutputCheck:
  name: str
  error: float
  atol: float

  @property
  def ok(self) -> bool:
    return bool(np.isfinite(self.error) and self.error <= self.atol)



def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  if got.shape != ref.shape:
    return float("inf")
  scale = np.linalg.norm(ref)
  return float(np.linalg.norm(got - ref) / scale) if scale > 0 else float(np.linalg.norm(got))


def strip(prefix: str, npz: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: npz[k] for k in npz if k.startswith(prefix)}


def nchw(x: np.ndarray) -> np.ndarray:
  return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
