"""`FieldEuler`: diffrax's forward Euler (eq 109), with the step taken by the field when it can do it in one pass.

diffrax's `Euler` computes y1 = y0 + dt F(t0, y0) as the field's call and then two more passes over the state (the
product with dt and the sum). A field may instead offer `euler_step(t, y, args, dt)`, the same map y + dt F(t, y)
(`AbstractField.euler_step` by default computes exactly that); the conv cubic field with `model.hand_vjp` and
`conv_impl: direct` computes it, and the step's reverse mode (eq 112), each in one custom call
(`ode_nets.fields.direct_conv.cubic_euler_step_direct`). Any other term is stepped by `diffrax.Euler` itself.
"""

from __future__ import annotations

import diffrax
from diffrax._term import WrapTerm  # diffeqsolve wraps every term in one (time direction); not exported by diffrax
from jaxtyping import Array, PyTree


def field_stepper(terms: diffrax.AbstractTerm) -> tuple[object, object] | None:
    """(field, time direction) when `terms` is a (wrapped) `ODETerm` of a field with its own `euler_step`."""
    direction = 1
    if isinstance(terms, WrapTerm):
        terms, direction = terms.term, terms.direction
    field = terms.vector_field if isinstance(terms, diffrax.ODETerm) else None
    return (field, direction) if hasattr(field, "euler_step") else None


class FieldEuler(diffrax.Euler):
    """Forward Euler, x_{l+1} = x_l + dt F(t_l, x_l) (eq 109): `diffrax.Euler`, whose step the field takes when it
    has `euler_step` (one pass instead of three for the fused conv cubic field); the same map either way."""

    def step(self, terms: diffrax.AbstractTerm, t0: Array, t1: Array, y0: PyTree[Array], args: object,
             solver_state: None, made_jump: Array) -> tuple:
        stepper = field_stepper(terms)
        if stepper is None:
            return super().step(terms, t0, t1, y0, args, solver_state, made_jump)
        field, direction = stepper
        y1 = field.euler_step(t0 * direction, y0, args, terms.contr(t0, t1))  # as WrapTerm.vf_prod evaluates it
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful
