"""A bi-level method from outside the package: global teacher weights softmax(v), v learned by
the hypergradient of the student's CE after the look-ahead, on hard-buffer batches. It is one
registration (``bilevel=True``) plus its own math; the look-ahead, the hard buffer (its config
section and check), the schedule and the meta update are the bi-level strategy's
(``mmkd_jax.methods.bilevel``)."""

import dataclasses

import jax
import jax.numpy as jnp

from mmkd_jax.distill import losses
from mmkd_jax.methods import BilevelMethod, TeacherWeights, register
from mmkd_jax.methods.base import apply_student, init_student, kd_matrix


@dataclasses.dataclass(frozen=True)
class GlobalWeightsKD(BilevelMethod):

  def init(self, rng, batch):
    params, state, _, _ = init_student(self.student, rng, batch["image"])
    return params, state, {"v": jnp.zeros((self.run.num_teachers,))}

  def compute_terms(self, params, state, meta_params, batch):
    _, logits, stats = apply_student(self.student, params, state, batch["image"])
    weights = self.warm_up(jnp.broadcast_to(jax.nn.softmax(meta_params["v"]), batch["teacher_logits"].shape[:2]),
                           batch)
    kd = jnp.mean(jnp.sum(weights * kd_matrix(logits, batch["teacher_logits"], self.temperature), -1))
    return ({"ce": losses.cross_entropy(logits, batch["label"]), "kd": kd}, dict(state, student=stats),
            {"logits": logits, "teacher_weights": TeacherWeights(logits=weights)})


@register("global_weights_kd", terms={"ce": 1.0, "kd": 1.0}, bilevel=True)
def build(config, run):
  """Global teacher weights learned by the look-ahead hypergradient."""
  return GlobalWeightsKD.from_config(config, run)
