"""Figures of docs/neural_odes.md: the 1-D map g(x) = -x (NODE vs ANODE), the circles flows, loss and NFE curves of
several runs side by side (Dupont, Doucet & Teh 2019, Figs 1-4; Chen et al. 2018, Fig 3)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ode_nets.plotting.figures import _save, nfe_per_epoch, read_metrics  # noqa: E402


def plot_flip(times: np.ndarray, node: np.ndarray, anode: np.ndarray, path: Path) -> Path:
    """x1(t) of the NODE (1-D: trajectories cannot cross, so g(x) = -x is out of reach) and the ANODE (2-D: they
    pass each other in the extra dimension), for inputs on [-1, 1]; states (times, inputs, dims)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colours = plt.cm.coolwarm(np.linspace(0, 1, node.shape[1]))
    for j, c in enumerate(colours):
        axes[0].plot(times, node[:, j, 0], color=c)
        axes[1].plot(times, anode[:, j, 0], color=c)
        axes[2].plot(anode[:, j, 0], anode[:, j, 1], color=c)
        axes[2].plot(anode[-1, j, 0], anode[-1, j, 1], "o", color=c, ms=4)
    axes[0].set(title="NODE (1-D): x(t)", xlabel="t", ylabel="x")
    axes[1].set(title="ANODE (1 + 1 dims): x1(t)", xlabel="t", ylabel="x1")
    axes[2].set(title="ANODE: (x1, x2) paths (dots: t = T)", xlabel="x1", ylabel="x2 (augmented, 0 at t = 0)")
    for ax in axes[:2]:
        ax.axhline(-1, ls=":", c="b", lw=0.8)
        ax.axhline(1, ls=":", c="r", lw=0.8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("g(x) = -x, trained on x = -1 -> 1 and x = 1 -> -1")
    return _save(fig, path)


def plot_flows(flows: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    """Trajectories of test points (states (times, B, N); N = 2 drawn in the plane, N = 3 in 3-D), coloured by
    class, one panel per (title, states, labels)."""
    fig = plt.figure(figsize=(6 * len(flows), 5))
    for k, (title, states, labels) in enumerate(flows, start=1):
        three_d = states.shape[-1] >= 3
        ax = fig.add_subplot(1, len(flows), k, projection="3d" if three_d else None)
        colours = np.where(labels == 0, "tab:red", "tab:blue")
        for j in range(states.shape[1]):
            coords = [states[:, j, i] for i in range(3 if three_d else 2)]
            ax.plot(*coords, color=colours[j], lw=0.5, alpha=0.35)
            ax.scatter(*[c[-1:] for c in coords], color=colours[j], s=6)
        ax.set(title=title, xlabel="x1", ylabel="x2")
        if three_d:
            ax.set_zlabel("x3 (augmented)")
    return _save(fig, path)


def plot_runs(folders: list[Path], path: Path) -> Path:
    """Training loss per logged step and NFE per step per epoch of several runs."""
    fig, (ax_loss, ax_nfe) = plt.subplots(1, 2, figsize=(12, 4))
    for folder in folders:
        records = read_metrics(Path(folder))
        train = [r for r in records if r.get("kind") == "train"]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label=Path(folder).name)
        for key, (epochs, means) in nfe_per_epoch(records).items():
            ax_nfe.plot(epochs, means, "-" if key == "nfe_forward" else "--", label=f"{Path(folder).name} {key}")
    ax_loss.set(xlabel="step", ylabel="training loss (batch)", yscale="log")
    ax_nfe.set(xlabel="epoch", ylabel="function evaluations per step")
    for ax in (ax_loss, ax_nfe):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)
