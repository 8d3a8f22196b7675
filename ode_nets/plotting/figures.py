"""The paper's figures from a run folder (PNG, matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ode_nets.build import load_run  # noqa: E402
from ode_nets.fields.time_params import is_time_param  # noqa: E402
from ode_nets.training import RunDir, predict  # noqa: E402
from ode_nets.training.storage import atomic_write_bytes, writing  # noqa: E402


def read_metrics(folder: Path) -> list[dict]:
    """All records of `metrics.jsonl`."""
    return RunDir(folder).read_metrics()


def plot_curves(records: list[dict], path: Path) -> Path:
    """Training loss/accuracy per logged step and evaluation accuracy per epoch."""
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (batch)")
        ax_acc.plot([r["step"] for r in train], [r["acc"] for r in train], alpha=0.4, label="train acc (batch)")
    for split in ("train", "validation", "test"):
        pts = [(r["step"], r[f"{split}_acc"], r[f"{split}_loss"]) for r in evals if f"{split}_acc" in r]
        if pts:
            steps, accs, losses = zip(*pts)
            ax_acc.plot(steps, accs, "o-", label=f"{split} acc")
            ax_loss.plot(steps, losses, "o-", label=f"{split} loss")
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log")
    _clip_outliers(ax_loss)
    ax_acc.set(xlabel="step", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def nfe_per_epoch(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean of each logged NFE series (nfe_forward, nfe_backward) over the logged steps of each epoch, as
    (epochs counted from 1, means); series absent from the records are left out."""
    train = [r for r in records if r.get("kind") == "train"]
    series = {}
    for key in ("nfe_forward", "nfe_backward"):
        points = [(r["epoch"] + 1, r[key]) for r in train if key in r]
        if points:
            epochs, values = np.asarray(points, float).T
            unique = np.unique(epochs)
            series[key] = (unique, np.array([values[epochs == e].mean() for e in unique]))
    return series


def plot_nfe(records: list[dict], path: Path, title: str = "") -> Path:
    """Function evaluations per training step against epoch, forward and backward (Chen et al. 2018, Fig 3d)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, (epochs, means) in nfe_per_epoch(records).items():
        ax.plot(epochs, means, "o-", ms=3, label=key.replace("_", " "))
    ax.set(xlabel="epoch", ylabel="function evaluations per step (mean over the epoch)", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _clip_outliers(ax, factor: float = 100.0) -> None:
    """Cap the y axis at `factor` x the 95th percentile of the plotted values, so that a few near-overflow
    losses (an explicit cubic step close to blowing up) do not flatten the curves; says how many are cut off."""
    values = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()] or [np.zeros(0)])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return
    top = factor * np.percentile(values, 95)
    above = int(np.sum(values > top))
    if above:
        ax.set_ylim(top=top)
        ax.set_title(f"{above} point(s) above {top:.3g} not shown", fontsize=9)


def plot_parameters(field, path: Path) -> Path:
    """Each scaled parameter (w~, b~, kappa~ ...) against layer number l (Figs 3, 4, 6)."""
    import jax

    params = [(name, p) for name, p in _named_time_params(field)]
    fig, axes = plt.subplots(1, len(params), figsize=(5 * len(params), 4), squeeze=False)
    for ax, (name, p) in zip(axes[0], params):
        values = np.asarray(jax.device_get(p.per_layer()))
        flat = values.reshape(values.shape[0], -1)
        layers = np.arange(1, flat.shape[0] + 1)
        for j in range(flat.shape[1]):
            ax.plot(layers, flat[:, j], marker="o" if flat.shape[1] <= 12 else None, ms=3,
                    lw=1 if flat.shape[1] <= 12 else 0.5, alpha=1 if flat.shape[1] <= 12 else 0.5)
        ax.set(xlabel="layer l", ylabel=f"{name}~", title=f"{name}~ = dt*{name} ({flat.shape[1]} entries)")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _named_time_params(field) -> list[tuple[str, object]]:
    names = [name for name in getattr(field, "__dataclass_fields__", {}) if is_time_param(getattr(field, name))]
    return [(name, getattr(field, name)) for name in names]


def plot_transformed(features: np.ndarray, probs: np.ndarray, path: Path, title: str) -> Path:
    """Data at the network output coloured by predicted probability of class 1 (Figs 2b, 5a)."""
    fig = plt.figure(figsize=(5, 4.5))
    if features.shape[1] >= 3:
        ax = fig.add_subplot(projection="3d")
        sc = ax.scatter(features[:, 0], features[:, 1], features[:, 2], c=probs, cmap="coolwarm", s=8, vmin=0, vmax=1)
        ax.set(xlabel="x1", ylabel="x2", zlabel="x3")
    else:
        ax = fig.add_subplot()
        sc = ax.scatter(features[:, 0], features[:, 1], c=probs, cmap="coolwarm", s=8, vmin=0, vmax=1)
        ax.set(xlabel="x1", ylabel="x2")
    fig.colorbar(sc, ax=ax, label="p(class 1)")
    ax.set_title(title)
    return _save(fig, path)


def plot_trajectory(inputs: np.ndarray, labels: np.ndarray, trajectory: np.ndarray, path: Path) -> Path:
    """One sample's path through the layers, layer numbers beside it (Figs 2c, 5b)."""
    fig = plt.figure(figsize=(5, 4.5))
    three_d = trajectory.shape[1] >= 3
    ax = fig.add_subplot(projection="3d") if three_d else fig.add_subplot()
    coords = [trajectory[:, i] for i in range(3 if three_d else 2)]
    base = [inputs[:, 0], inputs[:, 1]] + ([np.zeros(len(inputs))] if three_d else [])
    ax.scatter(*base, c=labels, cmap="coolwarm", s=4, alpha=0.3)
    ax.plot(*coords, "k.-", lw=1, ms=4)
    step = max(1, len(trajectory) // 10)
    for layer in range(0, len(trajectory), step):
        ax.text(*[c[layer] for c in coords], str(layer), fontsize=8)
    ax.set_title("sample trajectory through the layers")
    return _save(fig, path)


def plot_run(folder: Path) -> list[Path]:
    """All figures for a run folder into `<folder>/figures/`; returns their paths."""
    folder = Path(folder)
    config, dataset, model = load_run(folder)
    out = folder / "figures"
    records = read_metrics(folder)
    paths = [plot_curves(records, out / "curves.png")]
    if nfe_per_epoch(records):
        paths.append(plot_nfe(records, out / "nfe.png", config.name))
    if not hasattr(model, "field"):  # a multi-stage network (model.stages): several fields, no single trajectory
        return paths
    if _named_time_params(model.field):
        paths.append(plot_parameters(model.field, out / "parameters.png"))
    if config.model.field in ("cubic", "mlp"):
        x, y = dataset.test.x[:1000], dataset.test.y[:1000]  # enough points to see the flow; more hide each other
        features = np.asarray(model.features(x))
        probs = predict(model, x)[:, 1]
        paths.append(plot_transformed(features, probs, out / "transformed.png", f"{config.name}: output x(T)"))
        trajectory = np.asarray(model.trajectory(x[:1]))[:, 0]
        paths.append(plot_trajectory(x, y, trajectory, out / "trajectory.png"))
    if config.model.field == "conv_cubic":
        paths.extend(plot_conv_activations(model, dataset, out))
    return paths


def plot_conv_activations(model, dataset, out: Path) -> list[Path]:
    """For a test image of the digit 0: final activations of all channels, and channel 0 after every layer (Fig 7)."""
    index = int(np.argmax(dataset.test.y == 0))
    trajectory = np.asarray(model.trajectory(dataset.test.x[index:index + 1]))[:, 0]  # (L+1, C, H, W)
    channels = trajectory.shape[1]
    fig, axes = plt.subplots(1, channels, figsize=(1.6 * channels, 2))
    for c, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(trajectory[-1, c], cmap="viridis")
        ax.set_title(f"ch {c}", fontsize=8)
        ax.axis("off")
    fig.suptitle("final-layer activations, test digit 0")
    first = _save(fig, out / "final_activations.png")
    layers = trajectory.shape[0]
    cols = min(layers, 7)
    rows = -(-layers // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows))
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k < layers:
            ax.imshow(trajectory[k, 0], cmap="viridis")
            ax.set_title(f"l = {k}", fontsize=8)
    fig.suptitle("channel 0 after every layer")
    return [first, _save(fig, out / "channel0_layers.png")]


def _save(fig, path: Path) -> Path:
    """Write `fig` as `path` (atomically; a full disk is a `StorageError` naming the file) and close it."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
