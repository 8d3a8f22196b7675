"""The conv-ceiling measurements of issue 23b (ode_nets.experiments.conv_ceiling): the hand-written VJP of the fused
NHWC Euler scan is the exact discrete gradient (eq 112), checked against autodiff and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np

from ode_nets.experiments.conv_ceiling import (CUSTOM_CALLS, CUSTOM_NAMES, autodiff_euler, ceiling_table, conv_ceiling,
                                               fused_euler)
from tests.helpers import float64


def problem(batch: int = 2, size: int = 6, layers: int = 3):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((batch, size, size, 10)))
    kernels = jnp.asarray(0.1 * rng.standard_normal((layers, 3, 3, 10, 10)))
    biases = jnp.asarray(0.1 * rng.standard_normal((layers, 10)))
    return kernels, biases, jnp.asarray(0.05), x


def loss(solve):
    return lambda k, b, g, x: jnp.sum(jnp.max(solve(k, b, g, x), axis=(1, 2)) ** 2)


def test_fused_vjp_equals_autodiff_in_float64():
    with float64():
        args = problem()
        fused = jax.grad(loss(fused_euler), argnums=(0, 1, 2, 3))(*args)
        reference = jax.grad(loss(autodiff_euler), argnums=(0, 1, 2, 3))(*args)
        for a, b in zip(fused, reference):
            assert jnp.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_fused_gamma_gradient_matches_finite_differences():
    with float64():
        k, b, g, x = problem()
        d_gamma = jax.grad(loss(fused_euler), argnums=2)(k, b, g, x)
        h = 1e-6
        fd = (loss(autodiff_euler)(k, b, g + h, x) - loss(autodiff_euler)(k, b, g - h, x)) / (2 * h)
        assert abs(float(d_gamma) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_conv_ceiling_reports_a_floor_below_the_peak():
    c = conv_ceiling(batch=2, layers=2, peak_flops=1e12, repeats=2)
    assert c["floor_step_ms"] > 0 and 0 < c["floor_fraction_of_peak"] < 1
    assert c["fused"]["gradient_rel_diff"] < 1e-5
    assert "Floor from XLA convolutions" in ceiling_table(c)
    for impl, (unavailable, _, _) in CUSTOM_CALLS.items():
        name = f"Floor from the {CUSTOM_NAMES[impl]} custom calls"
        if unavailable() is None:
            assert set(c["custom_ms"][impl]) == {8, 10, 16}
            assert all(ms > 0 for times in c["custom_ms"][impl].values() for ms in times.values())
            assert name in ceiling_table(c) and 0 < c["custom_floor_fraction_of_peak"][impl] < 1
        else:
            assert impl not in c["custom_ms"] and name not in ceiling_table(c)


def test_torch_callback_conv_equals_the_xla_conv_and_its_gradients():
    import pytest

    torch = pytest.importorskip("torch")
    from ode_nets.experiments.conv_ceiling import conv_nhwc, torch_callback_conv

    conv = torch_callback_conv(torch)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((2, 6, 6, 10), dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 10, 10), dtype=np.float32))
    objective = lambda c: (lambda x, k: jnp.sum(jnp.sin(c(x, k))))  # noqa: E731
    assert jnp.allclose(jax.jit(conv)(x, kernel), conv_nhwc(x, kernel), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.grad(objective(conv), argnums=(0, 1))(x, kernel),
                    jax.grad(objective(conv_nhwc), argnums=(0, 1))(x, kernel)):
        assert jnp.allclose(a, b, rtol=1e-4, atol=1e-4)
