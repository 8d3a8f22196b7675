"""Vector fields F(t, x, args) -> dx/dt, each a final `eqx.Module` under `AbstractField`, and `FIELDS`, the
registry that names them in configs (`model.field`).

To add a field: subclass `AbstractField` (or `AbstractAnalyticField` if you also write its adjoint terms), give it
`feature_axis`, `__call__(t, x, args)` and `init(state_shape, params, key, **options)`, and add it to `FIELDS`.
`docs/architecture.md` has a worked example.
"""

from __future__ import annotations

from ode_nets.fields._base import AbstractAnalyticField, AbstractField, LayerParams
from ode_nets.fields.antisymmetric import AntisymmetricField
from ode_nets.fields.concat_squash import ConcatSquashField, AutonomousMLPField
from ode_nets.fields.cubic import (CONV_IMPLS, AbstractConvCubicField, AbstractCubicField, ChannelsLastConvCubicField,
                                  ConvCubicField, CubicField, odd_power)
from ode_nets.fields.hamiltonian import HamiltonianField
from ode_nets.fields.pde_conv import (NORMS, HamiltonianConvField, HyperbolicField, ParabolicField, ResNetConvField,
                                      normalise)
from ode_nets.fields.neural_ode import Conv, GroupNorm, MLPField, ODENetConvField
from ode_nets.fields.regularised import Regularised
from ode_nets.fields.resnet import ACTIVATIONS, ResNetField, SingleLayerField
from ode_nets.fields.time_params import (INTERPOLATIONS, Constant, LayerGrid, ParamInit, PiecewiseConstant,
                                         PiecewiseLinear, has_jumps, is_time_param, layer_grid)

FIELDS: dict[str, type[AbstractField]] = {
    "cubic": CubicField, "conv_cubic": ConvCubicField, "conv_cubic_nhwc": ChannelsLastConvCubicField,
    "resnet": ResNetField, "single_layer": SingleLayerField,
    "antisymmetric": AntisymmetricField, "hamiltonian": HamiltonianField,
    "parabolic": ParabolicField, "hyperbolic": HyperbolicField, "hamiltonian_conv": HamiltonianConvField,
    "resnet_conv": ResNetConvField,  # PDE-motivated CNNs (Ruthotto & Haber 2020), docs/pde_cnns.md
    "odenet_conv": ODENetConvField, "mlp": MLPField,
    "concat_squash": ConcatSquashField,  # FFJORD (continuous normalizing flows, docs/continuous_time.md)
}

__all__ = ["FIELDS", "ACTIVATIONS", "CONV_IMPLS", "AbstractField", "AbstractAnalyticField", "AbstractCubicField",
           "LayerParams", "CubicField", "ConvCubicField", "ResNetField", "SingleLayerField", "AntisymmetricField",
           "HamiltonianField", "Constant", "PiecewiseConstant", "ParamInit", "LayerGrid", "has_jumps",
           "is_time_param", "layer_grid", "odd_power", "NORMS", "ParabolicField", "HyperbolicField",
           "HamiltonianConvField", "ResNetConvField", "normalise",
           "PiecewiseLinear", "INTERPOLATIONS",
           "ODENetConvField", "MLPField", "GroupNorm", "Conv", "Regularised",
           "ConcatSquashField", "AutonomousMLPField", "AbstractConvCubicField", "ChannelsLastConvCubicField"]
