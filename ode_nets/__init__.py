"""ode_nets: deep neural networks as differential equations, built on JAX, Equinox and Diffrax.

The public API is flat, as diffrax's: fields, solvers, gradient strategies and models are Equinox modules that
plain-Python users build and combine themselves; a YAML config is one way to build them (`load_config`, `build`).

    import diffrax, optax, ode_nets as on
    field = on.CubicField.zeros(n=3, layers=20, gamma=0.1, learn_gamma=False)
    net = on.ODENet(field, diffrax.Euler(), on.DiscretizeThenOptimize(), on.SigmoidLast(), augment=1)

Layers, bottom up: fields -> solvers / stepping -> gradient strategies -> `solve` -> `ODENet` -> training ->
experiments -> scripts (docs/architecture.md).
"""

from ode_nets import build
from ode_nets.config import Config, load_config
from ode_nets.data import DATASETS, Dataset, Split, load_dataset
from ode_nets.errors import CheckpointError, ConfigError, DataError, RunDirError, TrainingError, UserError
from ode_nets.fields import (FIELDS, AbstractAnalyticField, AbstractCubicField, AbstractField, AntisymmetricField,
                             Constant, ConvCubicField, CubicField, HamiltonianField, LayerGrid, LayerParams, ParamInit,
                             PiecewiseConstant, ResNetField, SingleLayerField)
from ode_nets.fields import HamiltonianConvField, HyperbolicField, ParabolicField, ResNetConvField
from ode_nets.losses import cross_entropy, smoothness
from ode_nets.models import (READOUTS, AbstractReadout, LinearSoftmax, MaxPoolSoftmax, ODENet, SigmoidLast, Softmax,
                             count_parameters)
from ode_nets.multistage import Connective, MultiStageNet
from ode_nets.solve import solve
from ode_nets.solvers import (RK4, SOLVERS, AbstractStepping, AdamsBashforth3, AdaptiveSteps, Discretisation,
                              FieldEuler, FixedSteps, TwoStepLM, Verlet, with_two_step_memory)
from ode_nets.strategies import (STRATEGIES, AbstractDiffraxAdjoint, AbstractGradientStrategy, AnalyticAdjoint,
                                 DiscretizeThenOptimize, LayerParallel, OptimizeThenDiscretize, Reversible)
from ode_nets.training import Objective, RunDir, TrainOptions, evaluate, fit, predict
from ode_nets.fields.concat_squash import ConcatSquashField, AutonomousMLPField  # continuous time (docs/continuous_time.md)
from ode_nets.fields import MLPField, ODENetConvField, PiecewiseLinear, Regularised  # neural ODEs (issue 20)
from ode_nets.models import STEMS, AbstractStem, ChannelsLastStem, DownsamplingStem, IdentityStem, ODENetHead
from ode_nets.fields import ChannelsLastConvCubicField  # channels-last state (docs/performance.md)
from ode_nets.solvers import CountingController, solve_counts
from ode_nets.strategies import CountingBacksolveAdjoint, DirectAdjoint, ForwardMode

__all__ = [
    "build", "Config", "load_config", "DATASETS", "Dataset", "Split", "load_dataset",
    "UserError", "ConfigError", "DataError", "CheckpointError", "RunDirError", "TrainingError",
    "FIELDS", "AbstractField", "AbstractAnalyticField", "AbstractCubicField", "CubicField", "ConvCubicField",
    "ResNetField", "SingleLayerField", "AntisymmetricField", "HamiltonianField", "Constant", "PiecewiseConstant",
    "ParamInit", "LayerGrid", "LayerParams", "cross_entropy", "smoothness",
    "READOUTS", "AbstractReadout", "Softmax", "SigmoidLast", "MaxPoolSoftmax", "LinearSoftmax", "ODENet",
    "count_parameters", "solve",
    "SOLVERS", "FieldEuler", "RK4", "AdamsBashforth3", "TwoStepLM", "Verlet", "with_two_step_memory",
    "AbstractStepping",
    "FixedSteps", "AdaptiveSteps", "Discretisation",
    "STRATEGIES", "AbstractGradientStrategy", "AbstractDiffraxAdjoint", "DiscretizeThenOptimize",
    "OptimizeThenDiscretize", "AnalyticAdjoint", "Reversible", "LayerParallel",
    "fit", "Objective", "TrainOptions", "RunDir", "evaluate", "predict",
    "ParabolicField", "HyperbolicField", "HamiltonianConvField", "ResNetConvField", "MultiStageNet", "Connective",
    "MLPField", "ODENetConvField", "PiecewiseLinear", "Regularised", "STEMS", "AbstractStem", "DownsamplingStem",
    "IdentityStem", "ODENetHead", "CountingController", "solve_counts", "CountingBacksolveAdjoint", "DirectAdjoint", "ForwardMode",
]
__all__ += ["ConcatSquashField", "AutonomousMLPField", "ChannelsLastStem", "ChannelsLastConvCubicField"]
