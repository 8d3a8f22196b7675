"""Figures of the continuous-time models (PNG, matplotlib Agg): CNF data / density / samples, and true vs
reconstructed vs extrapolated time series."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ode_nets.continuous.data import IrregularSeries  # noqa: E402


def plot_cnf(arrays: dict, extent: float, title: str, path: Path) -> Path:
    """Three panels: held-out data, the learned density exp(log p) on the grid, samples of the flow."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    limits = (-extent, extent)
    axes[0].hist2d(*arrays["test"].T, bins=120, range=[limits, limits], cmap="viridis")
    axes[1].imshow(arrays["density"], origin="lower", extent=(*limits, *limits), cmap="viridis")
    axes[2].hist2d(*arrays["samples"].T, bins=120, range=[limits, limits], cmap="viridis")
    for ax, name in zip(axes, ("held-out data", "learned density (eq 28)", "samples of the flow")):
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_series(test: IrregularSeries, models: dict, t_obs: float, title: str, path: Path, n: int = 6) -> Path:
    """`n` test series: the clean trajectory, observed points, held-out points inside (x) and after (^) the
    window, and each model's prediction on a dense grid from the first observation (solid inside the window, dashed after)."""
    sub = IrregularSeries(*(np.asarray(a[:n]) for a in test))
    dense = np.stack([np.linspace(t0[0], t.max(), 300, dtype=np.float32) for t0, t in zip(sub.obs_t, sub.ext_t)])
    predictions = {name: np.asarray(m.predict(jnp.asarray(sub.obs_t), jnp.asarray(sub.obs_x), jnp.asarray(sub.obs_m),
                                              jnp.asarray(dense))) for name, m in models.items()}
    fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(4 * ((n + 1) // 2), 8))
    for i, ax in enumerate(np.ravel(axes)[:n]):
        t_all = np.concatenate([sub.obs_t[i], sub.int_t[i], sub.ext_t[i]])
        clean = np.concatenate([sub.obs_clean[i], sub.int_clean[i], sub.ext_clean[i]])
        ax.plot(*clean[np.argsort(t_all)].T, color="0.7", lw=3, label="truth")
        seen = sub.obs_m[i].all(-1)
        ax.plot(*sub.obs_x[i][seen].T, "k.", label="observed")
        ax.plot(*sub.int_x[i].T, "kx", label="held out (interp.)")
        ax.plot(*sub.ext_x[i].T, "k^", ms=4, label="held out (extrap.)")
        for (name, pred), colour in zip(predictions.items(), ("C0", "C1")):
            inside = dense[i] <= t_obs
            ax.plot(*pred[i][inside].T, color=colour, label=f"{name}")
            ax.plot(*pred[i][~inside].T, color=colour, ls="--")
        ax.set_aspect("equal", adjustable="datalim")
    np.ravel(axes)[0].legend(fontsize=7)
    fig.suptitle(f"{title}: solid = reconstruction inside the observed window, dashed = extrapolation")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
