"""Gradient strategies (`AbstractGradientStrategy`) and `STRATEGIES`, the registry that names them in configs
(`gradient.strategy`).

- `DiscretizeThenOptimize`: backprop through the solver's steps (diffrax `RecursiveCheckpointAdjoint`), eq 112;
- `OptimizeThenDiscretize`: the continuous adjoint eq 11 solved backwards (diffrax `BacksolveAdjoint`);
- `AnalyticAdjoint`: the paper's backward equations (eqs 62-71, 76-78, 112) as a custom VJP;
- `Reversible`: Verlet with memory-free backward reconstruction;
- `DirectAdjoint`: backprop through the solver's steps with diffrax's `DirectAdjoint` (no checkpointing; forward mode too);
- `ForwardMode`: forward-mode differentiation through the steps (diffrax's `ForwardMode`; one JVP per parameter);
- `LayerParallel`: MGRIT forward and adjoint solves across the layers (layer-parallel training).

To add a strategy: subclass `AbstractGradientStrategy` (write `solve`) or `AbstractDiffraxAdjoint` (write
`adjoint`) and add it to `STRATEGIES`; `docs/architecture.md` has a worked example.
"""

from __future__ import annotations

from ode_nets.strategies._base import AbstractDiffraxAdjoint, AbstractGradientStrategy, Monitor, pop_monitors
from ode_nets.strategies.analytic import AnalyticAdjoint, adjoint_on_grid
from ode_nets.strategies.diffrax_adjoints import (BackwardCounter, CountingBacksolveAdjoint, DirectAdjoint,
                                                 DiscretizeThenOptimize, ForwardMode, OptimizeThenDiscretize)
from ode_nets.strategies.layer_parallel import LayerParallel
from ode_nets.strategies.reversible import Reversible

STRATEGIES: dict[str, type[AbstractGradientStrategy]] = {
    "discretize_then_optimize": DiscretizeThenOptimize,
    "optimize_then_discretize": OptimizeThenDiscretize,
    "analytic_adjoint": AnalyticAdjoint,
    "reversible": Reversible,
    "layer_parallel": LayerParallel,
    "direct_adjoint": DirectAdjoint,
    "forward_mode": ForwardMode,
}


def strategy_name(strategy: AbstractGradientStrategy) -> str:
    """The registry name of `strategy` (its class name if it is not registered)."""
    return next((name for name, cls in STRATEGIES.items() if type(strategy) is cls), type(strategy).__name__)


__all__ = ["STRATEGIES", "strategy_name", "AbstractGradientStrategy", "AbstractDiffraxAdjoint",
           "DiscretizeThenOptimize", "OptimizeThenDiscretize", "AnalyticAdjoint", "Reversible", "adjoint_on_grid",
           "LayerParallel", "Monitor", "pop_monitors",
           "BackwardCounter", "CountingBacksolveAdjoint", "DirectAdjoint", "ForwardMode"]
