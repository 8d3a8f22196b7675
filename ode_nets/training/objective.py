"""The training objective: cross entropy (+ label smoothing) + lambda * eq-113 smoothness + beta * z-loss."""

from __future__ import annotations

import equinox as eqx
import jax

from ode_nets.losses import accuracy, cross_entropy, logit_level, smoothness


class Objective(eqx.Module):
    """The training loss of a model called as `model(x) -> logits`.

    `smoothness` is lambda of eq 113 (differences of the piecewise-constant parameters between layers),
    `label_smoothing` the eps of the smoothed targets, `logit_penalty` the beta of the "z-loss"
    `logsumexp(logits)^2`. The fields are Python floats: under `eqx.filter_jit` they are static.
    """

    smoothness: float = 0.0
    label_smoothing: float = 0.0
    logit_penalty: float = 0.0

    def __call__(self, model: eqx.Module, x: jax.Array, y: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
        """(loss, aux) on a batch; `mask` (0/1) weights the examples; aux holds ce, reg, acc (and logit_level)."""
        logits = model(x)
        ce = cross_entropy(logits, y, mask, self.label_smoothing)
        reg = smoothness(model)
        loss, aux = ce + self.smoothness * reg, {"ce": ce, "reg": reg, "acc": accuracy(logits, y, mask)}
        if self.logit_penalty:
            aux["logit_level"] = logit_level(logits, mask)
            loss = loss + self.logit_penalty * aux["logit_level"]
        return loss, aux

    def on_logits(self, logits: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        """The part of the loss that depends on the logits only (cross entropy, z-loss): Newton–PCG's output loss."""
        loss = cross_entropy(logits, y, mask, self.label_smoothing)
        return loss + self.logit_penalty * logit_level(logits, mask) if self.logit_penalty else loss

    def regulariser(self, model: eqx.Module) -> jax.Array:
        """lambda * eq 113 smoothness: the part of the loss that depends on the parameters only."""
        return self.smoothness * smoothness(model)
