"""Multilevel (cascadic) training of ResNets (Ruthotto 2019 slides, "Multilevel training of ResNets").

Train with n layers (h = T/n); prolongate every per-layer parameter to 2n layers (h/2) and keep
the classifier; train again; repeat for each entry of `train.levels`. Each level is an ordinary
run of `ode_nets.training.fit` (its own sub-folder `level_<L>`), started from the prolongated parameters.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ode_nets.build import build_run, fit_run, load_run, prepare_folder
from ode_nets.config import Config
from ode_nets.errors import ConfigError
from ode_nets.fields.time_params import PiecewiseConstant, is_time_param
from ode_nets.losses import predicted_class
from ode_nets.models import ODENet
from ode_nets.training import predict


def prolong_values(values: Array, factor: int, kind: str) -> Array:
    """Per-layer values (L, ...) -> (factor*L, ...).

    constant: each layer's value repeated `factor` times (the same piecewise-constant function of t);
    linear: piecewise-linear interpolation through the values at the coarse layer midpoints, evaluated
    at the fine midpoints (constant beyond the first and last midpoints).
    """
    if kind == "constant":
        return jnp.repeat(values, factor, axis=0)
    if kind != "linear":
        raise ConfigError(f"train.prolongation: {kind!r} is not 'constant' or 'linear'")
    layers = values.shape[0]
    coarse = (np.arange(layers) + 0.5) / layers
    fine = (np.arange(factor * layers) + 0.5) / (factor * layers)
    flat = values.reshape(layers, -1)
    out = jax.vmap(lambda column: jnp.interp(jnp.asarray(fine), jnp.asarray(coarse), column), 1, 1)(flat)
    return out.reshape((factor * layers, *values.shape[1:]))


def _dt_scaled(field: eqx.Module) -> bool:
    """Fields whose trainable leaves are scaled by dt (the cubic fields, eq 110) must be divided by the factor."""
    inner = getattr(field, "field", field)
    return hasattr(inner, "dt")


def prolongate(coarse: ODENet, fine: ODENet, kind: str = "constant") -> ODENet:
    """`fine` (a freshly built model with r times the layers) with the parameters of `coarse` prolongated.

    Every `PiecewiseConstant` goes through `prolong_values`; other arrays (the classifier readout, constants)
    are copied. For the cubic fields, whose leaves are w~ = dt w etc. (eq 110), all field leaves are
    divided by r so the physical parameters w(t), b(t), gamma are unchanged.
    """
    factor = fine.grid.layers // coarse.grid.layers
    if factor * coarse.grid.layers != fine.grid.layers:
        raise ConfigError(f"train.levels: {fine.grid.layers} layers is not a multiple of {coarse.grid.layers}")
    refine = lambda p: (dataclasses.replace(p, values=prolong_values(p.values, factor, kind))  # noqa: E731
                        if isinstance(p, PiecewiseConstant) else p)
    field = jax.tree_util.tree_map(refine, coarse.field, is_leaf=is_time_param)
    if _dt_scaled(field):
        inner = getattr(field, "field", field)
        inner = jax.tree_util.tree_map(lambda a: a / factor if eqx.is_inexact_array(a) else a, inner)
        field = eqx.tree_at(lambda f: f.field, field, inner) if inner is not field and hasattr(field, "field") else inner
    fine_params, fine_static = eqx.partition(fine.field, eqx.is_array)
    leaves = jax.tree_util.tree_leaves(eqx.filter(field, eqx.is_array))
    targets = jax.tree_util.tree_leaves(fine_params)
    shapes = [(a.shape, b.shape) for a, b in zip(leaves, targets) if a.shape != b.shape]
    if len(leaves) != len(targets) or shapes:
        raise ValueError(f"cannot prolongate: parameter shapes differ between levels ({shapes})")
    field = eqx.combine(jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fine_params), leaves), fine_static)
    model = eqx.tree_at(lambda m: m.field, fine, field)
    return eqx.tree_at(lambda m: m.readout, model, coarse.readout)  # a trained classifier head is kept


def level_config(config: Config, layers: int) -> Config:
    """`config` with `model.layers = layers` and the name tagged with the level."""
    return dataclasses.replace(config, name=f"{config.name}_L{layers}",
                               model=dataclasses.replace(config.model, layers=layers))


def train_multilevel(config: Config, folder: Path, *, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Train each level of `config.train.levels` in `folder/level_<L>`, prolongating between levels.

    Returns the per-level results (also written to `folder/levels.json`).
    """
    if not config.train.levels:
        raise ConfigError("train.levels: list the layer counts of the levels, e.g. train.levels=[32,64]")
    folder = Path(folder)
    results, previous, dataset = [], None, None
    for layers in config.train.levels:
        cfg = level_config(config, layers)
        sub = folder / f"level_{layers:04d}"
        prepare_folder(sub, cfg, overwrite=overwrite, resume=False)
        run = build_run(cfg, sub, dataset)
        dataset = run.dataset
        if previous is not None:
            run = dataclasses.replace(run, model=prolongate(previous, run.model, config.train.prolongation))
        result = fit_run(run, progress=progress)
        if result.get("interrupted"):
            break
        previous = load_run(sub)[2]
        results.append({"layers": layers, "folder": str(sub), **result})
        (folder / "levels.json").write_text(json.dumps(results, indent=2))
    return results


def level_curves(folder: Path) -> dict[str, np.ndarray]:
    """Eval metrics of all levels of a multilevel run, concatenated: epoch (cumulative), level, and each metric."""
    rows, offset = [], 0
    for sub in sorted(Path(folder).glob("level_*")):
        records = [json.loads(line) for line in (sub / "metrics.jsonl").read_text().splitlines() if line.strip()]
        evals = [r for r in records if r.get("kind") == "eval"]
        for r in evals:
            rows.append({**r, "epoch": r["epoch"] + offset, "level": int(sub.name.split("_")[1])})
        offset += max((r["epoch"] for r in evals), default=0)
    keys = sorted({k for r in rows for k in r if isinstance(r[k], (int, float))})
    return {k: np.array([r.get(k, np.nan) for r in rows], float) for k in keys}


def plot_curves(folders: dict[str, Path], path: Path) -> Path:
    """Training and validation loss and accuracy against epoch for several multilevel runs (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (label, folder), color in zip(folders.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        c = level_curves(folder)
        for metric, ax in (("loss", axes[0]), ("acc", axes[1])):
            ax.plot(c["epoch"], c[f"train_{metric}"], "-", color=color, label=f"{label} train")
            if f"validation_{metric}" in c:
                ax.plot(c["epoch"], c[f"validation_{metric}"], "--", color=color, label=f"{label} validation")
        for boundary in c["epoch"][np.flatnonzero(np.diff(c["level"])) + 1] - 0.5:
            for ax in axes:
                ax.axvline(boundary, color=color, alpha=0.2)
    for ax, name in zip(axes, ("cross entropy", "accuracy")):
        ax.set_xlabel("epoch (all levels)")
        ax.set_ylabel(name)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_regions(folder: Path, path: Path, levels: list[int] | None = None, grid: int = 150) -> Path:
    """Predicted class over the input plane after each level (2-D inputs), validation points on top (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    subs = sorted(Path(folder).glob("level_*"))
    if levels:
        subs = [s for s in subs if int(s.name.split("_")[1]) in levels]
    fig, axes = plt.subplots(1, len(subs), figsize=(3.2 * len(subs), 3.2), squeeze=False)
    for ax, sub in zip(axes[0], subs):
        config, dataset, model = load_run(sub)
        split = dataset.validation or dataset.test
        lo, hi = split.x.min(0) - 0.1, split.x.max(0) + 0.1
        u, v = np.meshgrid(np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid))
        plane = np.stack([u.ravel(), v.ravel()], -1).astype(np.float32)
        classes = np.asarray(predicted_class(predict(model, plane))).reshape(u.shape)
        classes = np.ma.masked_less(classes, 0)  # an overflowed solve is left blank, not painted as class 0
        ax.contourf(u, v, classes, levels=np.arange(dataset.num_classes + 1) - 0.5, cmap="tab10", alpha=0.35,
                    vmin=0, vmax=9)
        ax.scatter(split.x[:, 0], split.x[:, 1], c=split.y, cmap="tab10", vmin=0, vmax=9, s=3)
        ax.set_title(f"L = {config.model.layers}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
