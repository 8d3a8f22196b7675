"""The classic fourth-order Runge–Kutta method as a diffrax solver (diffrax has none; torchdiffeq users expect it).

    k1 = f(t, y), k2 = f(t + h/2, y + h k1/2), k3 = f(t + h/2, y + h k2/2), k4 = f(t + h, y + h k3),
    y1 = y + h (k1 + 2 k2 + 2 k3 + k4) / 6.

Fixed steps only: there is no embedded error estimate (`b_error` is zero), so it is not for adaptive stepping.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import diffrax
import numpy as np
from diffrax import ButcherTableau


class LinearInterpolation(diffrax.LocalLinearInterpolation):
    """Dense output between step ends, linear; `from_k` has the signature diffrax's Runge–Kutta solvers call
    (`interpolation_cls = LinearInterpolation.from_k`) for tableaus whose stages are no Hermite pair."""

    @classmethod
    def from_k(cls, *, t0: Any, t1: Any, y0: Any, y1: Any, k: Any) -> "LinearInterpolation":
        del k
        return cls(t0=t0, t1=t1, y0=y0, y1=y1)


RK4_TABLEAU = ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.zeros(4),
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(diffrax.AbstractERK):
    """Classic 4th-order Runge–Kutta (4 stages, global error O(h^4)); fixed steps only."""

    tableau: ClassVar[ButcherTableau] = RK4_TABLEAU
    interpolation_cls: ClassVar[Callable[..., LinearInterpolation]] = LinearInterpolation.from_k

    def order(self, terms: Any) -> int:
        del terms
        return 4
