"""The training objective: cross entropy (+ label smoothing) + lambda * eq-113 smoothness + beta * z-loss
(+ the kinetic and Jacobian regularisers of Finlay et al. 2020 for ODE-Nets)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ode_nets.losses import accuracy, cross_entropy, logit_level, masked_mean, smoothness


def probe_key(x: jax.Array) -> jax.Array:
    """A PRNG key for the Hutchinson probe, drawn from the batch itself (the step has no key): the bits of sum(x)
    folded into PRNGKey(0), so each batch gets its own probe and a rerun the same."""
    bits = jax.lax.bitcast_convert_type(jnp.sum(x).astype(jnp.float32), jnp.int32)
    return jax.random.fold_in(jax.random.PRNGKey(0), bits)


def run_forward(model: eqx.Module, x: jax.Array, args: object, regularise: bool) -> tuple[jax.Array, dict]:
    """Logits and the solve's counts and regularisers: `model.forward` where the model has one (`ODENet`),
    else `model(x)` and nothing else."""
    if not hasattr(model, "forward"):
        return model(x), {}
    logits, forward = model.forward(x, args=args, probe_key=probe_key(x) if regularise else None)
    extra = {"nfe_forward": forward.counts["nfe"], "steps_accepted": forward.counts["steps_accepted"],
             "steps_rejected": forward.counts["steps_rejected"]}
    if getattr(model.strategy, "backward_counting", "none") == "vjp":  # reverse mode: one VJP per forward evaluation
        extra["nfe_backward"] = forward.counts["nfe"]
    if regularise:
        extra["kinetic"], extra["jacobian"] = forward.kinetic, forward.jacobian
    return logits, extra


class Objective(eqx.Module):
    """The training loss of a model called as `model(x) -> logits`.

    `smoothness` is lambda of eq 113 (differences of the piecewise-constant parameters between layers),
    `label_smoothing` the eps of the smoothed targets, `logit_penalty` the beta of the "z-loss"
    `logsumexp(logits)^2`, `kinetic` and `jacobian_frobenius` the weights of int ||F||^2 dt and of
    int ||dF/dx||_F^2 dt (Hutchinson, Finlay et al. 2020; per example, averaged over the batch).
    The fields are Python floats: under `eqx.filter_jit` they are static.
    """

    smoothness: float = 0.0
    label_smoothing: float = 0.0
    logit_penalty: float = 0.0
    kinetic: float = 0.0
    jacobian_frobenius: float = 0.0

    def __call__(self, model: eqx.Module, x: jax.Array, y: jax.Array, mask: jax.Array, args: object = None
                 ) -> tuple[jax.Array, dict]:
        """(loss, aux) on a batch; `mask` (0/1) weights the examples; aux holds ce, reg, acc (and logit_level;
        for an `ODENet` the forward NFE and step counts, and the regularisers when weighted)."""
        logits, extra = run_forward(model, x, args, bool(self.kinetic or self.jacobian_frobenius))
        ce = cross_entropy(logits, y, mask, self.label_smoothing)
        reg = smoothness(model)
        loss, aux = ce + self.smoothness * reg, {"ce": ce, "reg": reg, "acc": accuracy(logits, y, mask)}
        if self.logit_penalty:
            aux["logit_level"] = logit_level(logits, mask)
            loss = loss + self.logit_penalty * aux["logit_level"]
        if "kinetic" in extra:
            extra["kinetic"], extra["jacobian"] = masked_mean(extra["kinetic"], mask), masked_mean(extra["jacobian"], mask)
            loss = loss + self.kinetic * extra["kinetic"] + self.jacobian_frobenius * extra["jacobian"]
        return loss, {**aux, **extra}

    def on_logits(self, logits: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        """The part of the loss that depends on the logits only (cross entropy, z-loss): Newton–PCG's output loss."""
        loss = cross_entropy(logits, y, mask, self.label_smoothing)
        return loss + self.logit_penalty * logit_level(logits, mask) if self.logit_penalty else loss

    def regulariser(self, model: eqx.Module) -> jax.Array:
        """lambda * eq 113 smoothness: the part of the loss that depends on the parameters only."""
        return self.smoothness * smoothness(model)
