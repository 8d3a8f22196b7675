"""Vector fields F(t, x, args) -> dx/dt, each an `eqx.Module`, and the registry that names them in configs.

To add a field: write an `eqx.Module` with `__call__(t, x, args)`, a `feature_axis` class
attribute and an `init(cfg, state_shape, key)` classmethod, and add it to `FIELDS`.
"""

from __future__ import annotations

import equinox as eqx
from jaxtyping import PRNGKeyArray

from ode_nets.config import ModelConfig
from ode_nets.fields.antisymmetric import AntisymmetricField
from ode_nets.fields.cubic import ConvCubicField, CubicField
from ode_nets.fields.hamiltonian import HamiltonianField
from ode_nets.fields.resnet import ResNetField, SingleLayerField
from ode_nets.fields.time_params import Constant, PiecewiseConstant, is_time_param

FIELDS: dict[str, type] = {"cubic": CubicField, "conv_cubic": ConvCubicField, "resnet": ResNetField,
                           "single_layer": SingleLayerField, "antisymmetric": AntisymmetricField,
                           "hamiltonian": HamiltonianField}


def build_field(cfg: ModelConfig, state_shape: tuple[int, ...], key: PRNGKeyArray) -> eqx.Module:
    """The field named by `cfg.field`, initialised for states of `state_shape` (no batch axis)."""
    if cfg.field not in FIELDS:
        raise ValueError(f"model.field: {cfg.field!r} is not available (choose from {', '.join(FIELDS)})")
    return FIELDS[cfg.field].init(cfg, state_shape, key)


__all__ = ["FIELDS", "build_field", "CubicField", "ConvCubicField", "Constant", "PiecewiseConstant",
           "is_time_param"]
