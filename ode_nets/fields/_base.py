"""The vector-field extension point: `AbstractField`, and `AbstractAnalyticField` for fields whose adjoint
equations are written out by hand (Ruseckas §3.3, §3.4) so that `AnalyticAdjoint` can use them.

A new field is one final class: subclass `AbstractField`, declare `feature_axis`, write `__call__(t, x, args)`
and an `init` classmethod (how its parameters are made for a state shape), and register its name in
`ode_nets.fields.FIELDS` if configs should reach it. Plain-Python users may pass any `AbstractField` to `ODENet`.
"""

import abc
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ode_nets.fields.time_params import ParamInit


class AbstractField(eqx.Module):
    """dx/dt = F(t, x, args) (eq 5), with parameters q(t) held as `TimeParam`s.

    `x` may carry leading batch axes; `feature_axis` says where the features (dense) or channels (conv) are,
    which `ODENet` augments with zeros (§3.2). `config_options` names the `model.*` config keys that `init`
    takes besides the shared `ParamInit`; `ode_nets.build` passes exactly those.
    """

    feature_axis: eqx.AbstractClassVar[int]
    config_options: ClassVar[tuple[str, ...]] = ()
    input_stem: ClassVar[str | None] = None  # a `model.stem` the field's state layout needs (None: any)

    @abc.abstractmethod
    def __call__(self, t: Float[Array, ""], x: Array, args: object = None) -> Array:
        """dx/dt at time t."""

    def euler_step(self, t: Float[Array, ""], x: PyTree[Array], args: object, dt: Float[Array, ""]) -> PyTree[Array]:
        """One forward-Euler step x + dt F(t, x) (eq 109), as `diffrax.Euler` computes it; `FieldEuler` asks the
        field for it, so that a field which can compute it in one pass (the fused conv cubic field) overrides it."""
        return jax.tree.map(lambda y, f: y + dt * f, x, self(t, x, args))

    @classmethod
    @abc.abstractmethod
    def init(cls, state_shape: tuple[int, ...], params: ParamInit, key: PRNGKeyArray, **options: object
             ) -> "AbstractField":
        """A field for states of `state_shape` (no batch axis), parameters made by `params`."""


class LayerParams(NamedTuple):
    """The scaled parameters in force on one layer: weight (w~ or kappa~), bias b~ and gamma~ (eq 110)."""

    weight: Array
    bias: Array
    gamma: Array


class AbstractAnalyticField(AbstractField):
    """A field that also writes out its adjoint terms, per layer (for `ode_nets.AnalyticAdjoint`):

    - `rhs(p, x)`: F with the parameters `p` of one layer (the same function `__call__` evaluates);
    - `vjp_state(p, x, a)`: a dF/dx, the right side of -da/dt = a dF/dx (eq 11);
    - `vjp_params(x, a)`: a dF/dq summed over the batch, the density of dL/dq (eqs 13-15);
    - `vjp(p, x, a)`: both at once (what the backward passes call; a field that computes them in one pass overrides it);
    - `euler_step_vjp(p, x, a, h)`: the reverse mode of one Euler step (eq 112), what the Euler backward pass calls;
    - `layer_params(l)`, `fold_gradients(per_layer)`: per-layer parameters in, a gradient pytree out.
    """

    @abc.abstractmethod
    def rhs(self, p: LayerParams, x: Array) -> Array:
        """F(x) with the parameters `p` of one layer."""

    @abc.abstractmethod
    def vjp_state(self, p: LayerParams, x: Array, a: Array) -> Array:
        """a dF/dx (= -da/dt)."""

    @abc.abstractmethod
    def vjp_params(self, x: Array, a: Array) -> LayerParams:
        """a dF/dq summed over the batch."""

    def vjp(self, p: LayerParams, x: Array, a: Array) -> tuple[LayerParams, Array]:
        """(a dF/dq summed over the batch, a dF/dx) at one layer's parameters `p`."""
        return self.vjp_params(x, a), self.vjp_state(p, x, a)

    def euler_step_vjp(self, p: LayerParams, x: Array, a: Array, h: Array | float) -> tuple[LayerParams, Array]:
        """The reverse mode of one Euler step x + h F(x) at cotangent a (eq 112): (h a dF/dq, a + h a dF/dx); a
        field that computes it in one pass (the fused conv cubic field) overrides it."""
        dens, vjp_x = self.vjp(p, x, a)
        return jax.tree.map(lambda g: h * g, dens), a + h * vjp_x

    def stored_step_vjp(self, p: LayerParams, stored: Array, index: Array, a: Array, h: Array | float
                        ) -> tuple[LayerParams, Array]:
        """`euler_step_vjp` at the state stored[index] of a stored trajectory (the backward pass of eq 112); a
        field that reads it in place (the fused conv cubic field) overrides it."""
        return self.euler_step_vjp(p, stored[index], a, h)

    @abc.abstractmethod
    def layer_params(self, layer: Array) -> LayerParams:
        """The parameters in force on layer `layer` (a traced index)."""

    @abc.abstractmethod
    def fold_gradients(self, per_layer: LayerParams) -> "AbstractAnalyticField":
        """Per-layer gradients (L, ...) as a pytree shaped like the field's trainable part."""

    @abc.abstractmethod
    def check_layers(self, layers: int) -> None:
        """Raise if the field's piecewise-constant parameters do not have `layers` pieces."""
