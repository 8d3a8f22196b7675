"""Diagnostics (eqs 21/25, 28/32, 36/83, 103-108, 61) against conservation laws and closed forms, float64."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ode_nets.analysis.diagnostics import (cubic_energy, energy_balance, entropy_rate, hamiltonian_along, jacobian_trace,
                                  kinetic_energy, stability)
from ode_nets.fields.cubic import CubicField
from ode_nets.fields.time_params import Constant, LayerGrid
from ode_nets.solve import solve
from ode_nets.solvers import AdaptiveSteps, Discretisation

TIGHT = AdaptiveSteps(rtol=1e-10, atol=1e-12)  # with diffrax.Tsit5()


def random_field(key, n: int = 3, symmetric: bool = False, scale: float = 0.8) -> CubicField:
    """Time-independent cubic field with unscaled w, b ~ N(0, scale^2), gamma = 0.5, dt = 0.25 (so w~ = w/4)."""
    kw, kb = jax.random.split(key)
    w = scale * jax.random.normal(kw, (n, n))
    if symmetric:
        w = 0.5 * (w + w.T)
    dt = 0.25
    return CubicField(Constant(dt * w), Constant(dt * scale * jax.random.normal(kb, (n,))), jnp.asarray(dt * 0.5),
                      dt=dt)


def trajectory(field, x0, ts):
    return solve(field, x0, solver=diffrax.Tsit5(), grid=LayerGrid(float(ts[-1]), 4), stepping=TIGHT,
                 saveat=diffrax.SaveAt(ts=ts)).ys


def test_hamiltonian_conserved_for_time_independent_parameters(x64):
    """H = a F is constant along the solve (eq 25) and equals dL/dx(T) F(x(T)) at the end."""
    field = random_field(jax.random.PRNGKey(0))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    target = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
    loss = lambda xt: jnp.sum((xt - target) ** 2)  # noqa: E731
    ts, h = hamiltonian_along(field, x0, loss, Discretisation(diffrax.Tsit5(), LayerGrid(1.0, 4), TIGHT))
    assert len(ts) == 5
    assert float(jnp.max(jnp.abs(h - h[-1]))) < 1e-7 * float(jnp.abs(h[-1]))
    assert abs(float(h[-1])) > 1e-3  # a nontrivial H, so the relative bound means something


def test_energy_non_increasing_for_symmetric_w(x64):
    """E(x(t)) of eq 83 does not increase along a solve with random symmetric w (eq 36); F = -dE/dx."""
    field = random_field(jax.random.PRNGKey(3), symmetric=True)
    x0 = 2.0 * jax.random.normal(jax.random.PRNGKey(4), (6, 3))
    ts = jnp.linspace(0.0, 1.0, 41)
    energies = cubic_energy(field, 0.0, trajectory(field, x0, ts))  # (41, 6)
    assert float(jnp.max(jnp.diff(energies, axis=0))) <= 1e-10
    assert float(jnp.min(energies[0] - energies[-1])) > 1e-3
    grad_e = jax.grad(lambda x: cubic_energy(field, 0.0, x))(x0[0])
    assert jnp.allclose(-grad_e, field(0.0, x0[0]), atol=1e-12)


def test_energy_balance_matches_numerical_derivative(x64):
    """d/dt x^2/2 from central differences of a tight solve = P_w + P_b - P_gamma (eqs 103-108)."""
    field = random_field(jax.random.PRNGKey(5))
    x0 = jax.random.normal(jax.random.PRNGKey(6), (4, 3))
    eps = 1e-4
    ts = jnp.array([0.5 - eps, 0.5, 0.5 + eps])
    xs = trajectory(field, x0, ts)
    numeric = (kinetic_energy(xs[2]) - kinetic_energy(xs[0])) / (2 * eps)
    balance = energy_balance(field, 0.5, xs[1])
    assert jnp.allclose(balance["dE_dt"], numeric, rtol=1e-6, atol=1e-8)
    assert float(jnp.max(jnp.abs(balance["P_w"]))) > 1e-3  # every term is exercised


def test_entropy_rate_is_volume_change(x64):
    """Liouville (eq 28): log|det dx(T)/dx(0)| = int_0^T Tr dF/dx dt along the trajectory; eq 32 averages it."""
    field = random_field(jax.random.PRNGKey(7))
    x0 = jax.random.normal(jax.random.PRNGKey(8), (3,))
    ts = jnp.linspace(0.0, 1.0, 201)
    flow = lambda x: trajectory(field, x, jnp.array([0.0, 1.0]))[-1]  # noqa: E731
    logdet = jnp.linalg.slogdet(jax.jacrev(flow)(x0))[1]
    xs = trajectory(field, x0[None], ts)  # (201, 1, 3)
    traces = entropy_rate(field, ts, xs)
    integral = jnp.sum(0.5 * (traces[1:] + traces[:-1]) * jnp.diff(ts))
    assert abs(float(integral - logdet)) < 1e-4
    closed = (jnp.trace(field.w.value) - 3 * field.gamma * jnp.sum(xs[10, 0] ** 2)) / field.dt  # eq 61 trace
    assert jnp.allclose(jacobian_trace(field, 0.0, xs[10])[0], closed, atol=1e-10)


def test_stability_matches_eq61_eigenvalues(x64):
    """Max Re(eig dF/dx) per time = the eigenvalues of the closed-form Jacobian of eq 61."""
    field = random_field(jax.random.PRNGKey(9), n=4)
    xs = jax.random.normal(jax.random.PRNGKey(10), (3, 5, 4))
    ts = jnp.array([0.0, 0.5, 1.0])
    expected = [max(float(jnp.max(jnp.real(jnp.linalg.eigvals(field.jacobian(t, x))))) for x in xs[s])
                for s, t in enumerate(ts)]
    assert np.allclose(np.asarray(stability(field, ts, xs)), expected, atol=1e-10)


def test_run_summary_lists_finished_and_stopped_runs(tmp_path):
    import json

    from ode_nets.config import from_dict
    from ode_nets.plotting.diagnostics import summarize_runs
    from ode_nets.build import prepare_folder

    cfg = from_dict({"name": "tiny", "train": {"epochs": 2}})
    finished, stopped = tmp_path / "finished", tmp_path / "stopped"
    for folder in (finished, stopped):
        prepare_folder(folder, cfg, overwrite=False, resume=False)
    evals = [{"kind": "eval", "step": 10 * e, "epoch": e, "train_acc": 0.5 + 0.2 * e, "test_acc": 0.4 + 0.3 * e,
              "train_loss": 1.0 / e} for e in (1, 2)]
    (finished / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    (finished / "results.json").write_text(json.dumps({"parameters": 240, "test_acc": 1.0, "train_wall_time_s": 8.0}))
    (stopped / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 7, "loss": 1.0}) + "\n")

    failed = tmp_path / "failed"  # a run that failed before its first step (results.json marks it)
    prepare_folder(failed, cfg, overwrite=False, resume=False)
    (failed / "results.json").write_text(json.dumps({"name": "tiny", "status": "failed", "step": 0, "error": "x"}))

    rows = summarize_runs([finished, stopped, failed], target_acc=0.95).splitlines()[2:]
    assert rows[0].split(" | ")[3:8] == ["240", "0.9000", "1.0000", "4.00", "2"]  # s/epoch = 8 s / 2, 0.4+0.6 >= 0.95
    assert "stopped at step 7" in rows[1] and "stopped at step 0" in rows[2]


def test_curves_figure_caps_the_loss_axis_above_overflow_spikes(tmp_path):
    """A single near-overflow training loss (1e28) must not flatten the loss curve: the axis is capped and the
    figure says how many points it leaves out; without an outlier the axis is left alone."""
    import matplotlib.pyplot as plt

    from ode_nets.plotting.figures import _clip_outliers, plot_curves

    losses = [0.5 / (1 + s) for s in range(200)]
    losses[100] = 1e28
    records = [{"kind": "train", "step": s, "loss": v, "acc": 0.9} for s, v in enumerate(losses)]
    records.append({"kind": "eval", "step": 199, "epoch": 1, "test_loss": 0.01, "test_acc": 0.95})
    assert plot_curves(records, tmp_path / "curves.png").stat().st_size > 0
    spiky = plt.figure().add_subplot(yscale="log")
    spiky.plot(losses)
    _clip_outliers(spiky)
    assert spiky.get_ylim()[1] < 1e3 and spiky.get_title().startswith("1 point(s) above")
    smooth = plt.figure().add_subplot(yscale="log")
    smooth.plot(losses[:100])
    _clip_outliers(smooth)
    assert smooth.get_ylim()[1] < 1.0 and smooth.get_title() == ""
    plt.close("all")


def test_cubic_overshoot_is_gamma_x_squared_at_its_worst_layer():
    """Zero w~, b~: each Euler layer is x -> x - gamma~ x^3 (eq 109). From |x| = 3 it contracts (gamma~ x^2 = 0.9 at
    layer 0 is the maximum); from |x| = 5 (gamma~ x^2 = 2.5 > 2) it overshoots to |x| = 7.5 and grows."""
    import diffrax

    from ode_nets.analysis.diagnostics import cubic_overshoot
    from ode_nets.models import ODENet, Softmax
    from ode_nets.strategies import DiscretizeThenOptimize

    field = CubicField.zeros(n=2, layers=3, gamma=0.1, learn_gamma=True)
    net = ODENet(field, diffrax.Euler(), DiscretizeThenOptimize(), Softmax())
    ratio = cubic_overshoot(net, np.array([[1.0, -3.0], [5.0, 0.0]], np.float32))
    assert np.isclose(ratio[0], 0.9, rtol=1e-5)
    x1 = 5.0 - 0.1 * 125.0
    x2 = x1 - 0.1 * x1 ** 3
    assert np.isclose(ratio[1], 0.1 * x2 ** 2, rtol=1e-4) and ratio[1] > 2
