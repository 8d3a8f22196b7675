"""`optim.gamma_rate`: the shared gamma~ gets its own SGD rate (ode_nets.training.rates)."""

import equinox as eqx
import jax.numpy as jnp
import pytest

from ode_nets.build import build_optimizer
from ode_nets.config import OptimConfig
from ode_nets.errors import ConfigError


class Params(eqx.Module):
    kernel: jnp.ndarray
    gamma: jnp.ndarray


def sgd_update(cfg: OptimConfig, grads: Params) -> Params:
    opt = build_optimizer(cfg, total_steps=10)
    updates, _ = opt.update(grads, opt.init(grads), grads)
    return updates


def test_gamma_rate_scales_only_gamma_for_sgd():
    grads = Params(kernel=jnp.array([1.0, -2.0]), gamma=jnp.array(4.0))
    plain = sgd_update(OptimConfig(name="sgd", learning_rate=0.5), grads)
    scaled = sgd_update(OptimConfig(name="sgd", learning_rate=0.5, gamma_rate=0.25), grads)
    assert jnp.allclose(scaled.kernel, plain.kernel) and jnp.allclose(plain.kernel, jnp.array([-0.5, 1.0]))
    assert jnp.allclose(scaled.gamma, 0.25 * plain.gamma) and jnp.allclose(plain.gamma, -2.0)


def test_gamma_rate_acts_before_global_norm_clipping():
    """The scaled gamma~ gradient is what the clip sees: a dominant gamma~ no longer shrinks the kernel's step."""
    grads = Params(kernel=jnp.array([0.6, 0.0]), gamma=jnp.array(8.0))
    cfg = OptimConfig(name="sgd", learning_rate=1.0, clip_norm=1.0, gamma_rate=0.05)
    updates = sgd_update(cfg, grads)
    norm = jnp.sqrt(0.6 ** 2 + 0.4 ** 2)  # gamma~ gradient 8 * 0.05 = 0.4, below the clip: nothing is clipped
    assert norm < 1.0
    assert jnp.allclose(updates.kernel, jnp.array([-0.6, 0.0])) and jnp.allclose(updates.gamma, -0.4)


def test_negative_gamma_rate_is_refused():
    with pytest.raises(ConfigError, match="optim.gamma_rate"):
        OptimConfig(gamma_rate=-1.0)


def rates_of(opt, steps: int) -> list[float]:
    """The learning rate of each of `steps` SGD updates (gradient 1, no momentum)."""
    grads = jnp.array([1.0])
    state, rates = opt.init(grads), []
    for _ in range(steps):
        updates, state = opt.update(grads, state, grads)
        rates.append(-float(updates[0]))
    return rates


def test_step_schedule_drops_the_rate_where_chen_does():
    """optim.schedule: step with Chen et al.'s decay_at (epochs 60, 100, 140 of 160): x0.1 at each, from that step."""
    cfg = OptimConfig(learning_rate=0.1, schedule="step", decay_at=(0.375, 0.625, 0.875), decay_rate=0.1)
    expected = [0.1] * 60 + [0.01] * 40 + [0.001] * 40 + [1e-4] * 20
    assert rates_of(build_optimizer(cfg, total_steps=160), 160) == pytest.approx(expected, rel=1e-5)
    # 0.375 and 0.625 of 2 steps both round to step 1: x0.01 there
    assert rates_of(build_optimizer(cfg, total_steps=2), 2) == pytest.approx([0.1, 0.001], rel=1e-5)
