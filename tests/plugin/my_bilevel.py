"""A bi-level method from outside the package: global teacher weights softmax(v), v learned by
the hypergradient of the student's CE after the look-ahead, on hard-buffer batches. It writes
only its terms; the look-ahead, hard buffer, schedule and meta update come from
``mmkd_jax.methods.bilevel``."""

import dataclasses

import jax
import jax.numpy as jnp

from mmkd_jax.distill import losses
from mmkd_jax.methods import (BUFFER_SECTION, BilevelMethod, TeacherWeights, bilevel_fields, check_buffer,
                              loss_weights, register)
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


@register("global_weights_kd", terms={"ce": 1.0, "kd": 1.0}, bilevel=True, lookahead={"ce": 0.0},
          section=BUFFER_SECTION, validate=lambda config: check_buffer(config, "global_weights_kd"))
def build(config, run):
  """Global teacher weights learned by the look-ahead hypergradient."""
  return GlobalWeightsKD(run, loss_weights(config), config.temperature,
                         **bilevel_fields(config, "global_weights_kd"))
