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
    """One column per network family (run names `<family>_L<layers>`, one colour per run): test accuracy (top) and mean
    amplification M (bottom) against eps; random perturbations dotted, FGSM dashed, PGD solid."""
    families: dict[str, list[str]] = {}
    for name in results:
        families.setdefault(name.rsplit("_L", 1)[0], []).append(name)
    fig, axes = plt.subplots(2, len(families), figsize=(3.6 * len(families), 6.4), squeeze=False, sharey="row")
    styles = {"random": ":", "fgsm": "--", "pgd": "-"}
    for col, (family, names) in enumerate(families.items()):
        for i, name in enumerate(names):
            eps = [r["eps"] for r in results[name]]
            for kind in KINDS:
                label = f"{name.rsplit('_', 1)[-1]} {kind}"
                axes[0, col].plot(eps, [r[f"{kind}_acc"] for r in results[name]], styles[kind], color=f"C{i}",
                                  marker=".", label=label)
                axes[1, col].semilogy(eps, [r[f"{kind}_M_mean"] for r in results[name]], styles[kind], color=f"C{i}",
                                      marker=".")
        axes[0, col].set_title(family, fontsize=9)
        axes[1, col].set_xlabel("eps (L-infinity)")
        axes[0, col].legend(fontsize=6)
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("mean M, input -> last stage")
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
