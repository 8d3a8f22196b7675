"""Figures of docs/pde_cnns.md: accuracy and amplification M against the perturbation size, the 20-layer tanh toy
(a grid carried forward by a random ResNet and by an antisymmetric network), and double descent."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ode_nets.plotting.figures import _save  # noqa: E402

KINDS = ("random", "fgsm", "pgd")


def plot_perturbations(results: dict[str, list[dict]], path: Path) -> Path:
    """Left: test accuracy against eps (clean dotted, random, FGSM, PGD); right: mean M against eps; one colour a run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"random": ":", "fgsm": "--", "pgd": "-"}
    for i, (name, records) in enumerate(results.items()):
        eps = [r["eps"] for r in records]
        colour = f"C{i}"
        for kind in KINDS:
            left.plot(eps, [r[f"{kind}_acc"] for r in records], styles[kind], color=colour, marker=".",
                      label=f"{name} {kind}")
            right.semilogy(eps, [r[f"{kind}_M_mean"] for r in records], styles[kind], color=colour, marker=".")
    left.set_xlabel("perturbation size eps (L-infinity)")
    left.set_ylabel("test accuracy")
    left.legend(fontsize=6, ncol=2)
    right.set_xlabel("perturbation size eps (L-infinity)")
    right.set_ylabel("mean M = |y(T) - y~(T)| / |y(0) - y~(0)|")
    right.set_title("random (dotted), FGSM (dashed), PGD (solid)", fontsize=9)
    return _save(fig, path)


def plot_toy(flows: dict[str, np.ndarray], colours: np.ndarray, path: Path) -> Path:
    """Each flow (L+1, P, 2) as the grid at layers 0, L/2, L (one row per network), points coloured by `colours`."""
    fig, axes = plt.subplots(len(flows), 3, figsize=(10, 3.3 * len(flows)), squeeze=False)
    for row, (name, flow) in enumerate(flows.items()):
        layers = flow.shape[0] - 1
        for col, layer in enumerate((0, layers // 2, layers)):
            ax = axes[row, col]
            ax.scatter(flow[layer, :, 0], flow[layer, :, 1], c=colours, cmap="viridis", s=4)
            ax.set_title(f"{name}: layer {layer}", fontsize=9)
            ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, path)


def plot_double_descent(setup_n: int, ms: list[int], curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Median test risk (solid) and mean train risk (dotted) against the number of features M, log scales."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, c) in enumerate(curves.items()):
        ax.loglog(ms, c["test_median"], "-", color=f"C{i}", marker=".", label=f"{name}: test risk (median)")
        ax.loglog(ms, np.maximum(c["train_mean"], 1e-12), ":", color=f"C{i}", label=f"{name}: train risk")
    ax.axvline(setup_n, color="k", lw=0.8)
    ax.text(setup_n * 1.05, ax.get_ylim()[1] / 10, "interpolation threshold M = N", fontsize=8)
    ax.set_xlabel("number of features M")
    ax.set_ylabel("mean squared error")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_fits(data: dict, path: Path) -> Path:
    """The fitted curves of each method for a few M (one panel each), the data and the true function."""
    ms = list(data["curves"])
    fig, axes = plt.subplots(1, len(ms), figsize=(3.6 * len(ms), 3.4), squeeze=False)
    for ax, m in zip(axes[0], ms):
        ax.plot(data["grid"], data["truth"], "k-", lw=1, label="truth")
        for i, (name, curve) in enumerate(data["curves"][m].items()):
            ax.plot(data["grid"], curve, color=f"C{i}", lw=1, label=name)
        ax.plot(data["x"], data["y"], "ko", ms=3)
        ax.set_ylim(-3, 3)
        ax.set_title(f"M = {m}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)
