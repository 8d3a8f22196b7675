"""Figures for `ode_nets.analysis.diagnostics` and for comparing training runs (PNG, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ode_nets.analysis.diagnostics import cubic_overshoot, gradient_agreement, network_diagnostics
from ode_nets.build import build_objective, load_run
from ode_nets.config import load_config
from ode_nets.errors import ConfigError, RunDirError
from ode_nets.plotting.figures import _save, plt, read_metrics


def diagnose_run(folder: Path, samples: int = 400) -> list[Path]:
    """Diagnostics of a trained dense-cubic run on (up to) `samples` test points: figures into
    `<folder>/figures/diagnostics_*.png` and the numbers into `<folder>/diagnostics.json`."""
    folder = Path(folder)
    config, dataset, model = load_run(folder)
    if config.model.field != "cubic":
        raise ConfigError(f"diagnose: {folder} has model.field {config.model.field!r}; the diagnostics need 'cubic'")
    x, y = dataset.test.x[:samples], dataset.test.y[:samples]
    diag = network_diagnostics(model, x, y)
    (folder / "diagnostics.json").write_text(json.dumps({k: np.asarray(v).tolist() for k, v in diag.items()}))
    return plot_diagnostics(diag, folder / "figures", config.name)


def plot_diagnostics(diag: dict[str, np.ndarray], out: Path, title: str) -> list[Path]:
    """Energy balance (eqs 103-108), Hamiltonian (eq 21), entropy rate (eq 32), max Re eig dF/dx per layer."""
    t = diag["t"]
    dt = float(t[1] - t[0])
    layer_t = t[:-1]
    fig, (ax_e, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    ax_e.plot(t, diag["E_kinetic"], "o-", ms=3)
    ax_e.set(xlabel="t", ylabel="mean E = x^2/2", title="kinetic energy (eq 103)")
    for key, style in (("P_w", "-"), ("P_b", "-"), ("P_gamma", "-"), ("dE_dt", "k-")):
        values = -diag[key] if key == "P_gamma" else diag[key]
        ax_p.plot(layer_t, values[:-1], style, label=("-" if key == "P_gamma" else "") + key)
    ax_p.plot(layer_t, diag["dE_dt_numeric"], "k--", label="(E_{l+1}-E_l)/dt")
    ax_p.set(xlabel="t (start of layer)", ylabel="power", title=f"energy balance (eqs 104-108), dt = {dt:g}")
    ax_p.legend(fontsize=8)
    paths = [_save(_grid(fig), out / "diagnostics_energy.png")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(diag["t_H"], diag["H"], "o-", ms=3)
    axes[0].set(xlabel="t", ylabel="H = a . F", title="Hamiltonian H = a.F at layer starts (eq 21)")
    axes[1].plot(t, diag["entropy_rate"], "o-", ms=3)
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set(xlabel="t", ylabel="E_x[Tr dF/dx]", title="entropy rate dH/dt (eq 32)")
    axes[2].plot(t, diag["max_real_eig"], "o-", ms=3)
    axes[2].axhline(0, color="k", lw=0.5)
    axes[2].set(xlabel="t", ylabel="max Re lambda(dF/dx)", title="stability (eq 61)")
    fig.suptitle(title)
    paths.append(_save(_grid(fig), out / "diagnostics_hamiltonian_entropy_stability.png"))
    return paths


def _grid(fig):
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    return fig


def plot_training_pair(folders: list[Path], labels: list[str], path: Path) -> Path:
    """Training loss (per logged step) and test accuracy (per epoch) of several runs in one figure (§2.5)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for folder, label in zip(folders, labels):
        records = read_metrics(Path(folder))
        train = [r for r in records if r.get("kind") == "train"]
        evals = [r for r in records if r.get("kind") == "eval" and "test_acc" in r]
        if not train:
            raise RunDirError(f"diagnose curves: {folder} has no training records in metrics.jsonl")
        line, = ax_loss.plot([r["step"] for r in train], [r["ce"] for r in train], label=f"{label}: train CE")
        if evals:
            ax_acc.plot([r["step"] for r in evals], [r["test_acc"] for r in evals], "-", color=line.get_color(),
                        label=f"{label}: test acc")
    ax_loss.set(xlabel="step", ylabel="cross entropy (batch)", yscale="log")
    ax_acc.set(xlabel="step", ylabel="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=8)
    return _save(_grid(fig), path)


def summarize_runs(folders: list[Path], target_acc: float = 0.95) -> str:
    """Markdown table of runs (a run without results.json is listed as stopped): strategy, final train/test accuracy, wall time per epoch, and the first
    epoch whose test accuracy reaches `target_acc` (a training-speed measure for §2.5)."""
    lines = [f"| run | strategy | time-dependent | params | train acc | test acc | s / epoch | "
             f"first epoch with test acc >= {target_acc:g} | final train CE |", "|" + "---|" * 9]
    for folder in map(Path, folders):
        config = load_config(folder / "config.yaml")
        records = read_metrics(folder)
        results_path = folder / "results.json"
        if not results_path.is_file() or json.loads(results_path.read_text()).get("status") == "failed":
            # stopped (non-finite guard, interrupt, failure before the first step): no final results
            steps = [r["step"] for r in records if "step" in r]
            lines.append(f"| {folder.name} | {config.gradient.strategy} | {config.model.time_dependent} | - | "
                         f"stopped at step {max(steps, default=0)}, no results.json | - | - | - | - |")
            continue
        results = json.loads((folder / "results.json").read_text())
        evals = [r for r in records if r.get("kind") == "eval"]
        reached = next((r["epoch"] for r in evals if r.get("test_acc", 0.0) >= target_acc), None)
        final = evals[-1] if evals else {}
        per_epoch = results["train_wall_time_s"] / max(final.get("epoch", config.train.epochs), 1)
        lines.append(f"| {folder.name} | {config.gradient.strategy} | {config.model.time_dependent} | "
                     f"{results.get('parameters')} | {final.get('train_acc', float('nan')):.4f} | "
                     f"{results.get('test_acc', float('nan')):.4f} | {per_epoch:.2f} | {reached if reached else '-'} | "
                     f"{final.get('train_loss', float('nan')):.4f} |")
    return "\n".join(lines)


def overshoot_report(folder: Path, split: str = "train", examples: int | None = None) -> str:
    """How close the examples of `split` come to the explicit cubic step's overshoot gamma~ x^2 > 2
    (`cubic_overshoot`), for the run's final model or newest checkpoint: quantiles and counts."""
    folder = Path(folder)
    config, dataset, model = load_run(folder)
    if not hasattr(getattr(model, "field", None), "gamma"):
        raise ConfigError(f"overshoot: {folder} has model.field {config.model.field!r}, which has no gamma~")
    x = getattr(dataset, split).x[:examples]
    ratio = cubic_overshoot(model, x)
    finite = ratio[np.isfinite(ratio)]
    quantiles = np.quantile(finite, [0.5, 0.9, 0.99, 0.999, 1.0]) if finite.size else [np.nan] * 5
    gamma = float(model.field.gamma)
    return (f"{folder} ({split}, {len(x)} examples): gamma~ = {gamma:.3g}, threshold |x| = sqrt(2/gamma~) = "
            f"{np.sqrt(2 / gamma) if gamma > 0 else np.inf:.3g}\n"
            f"max over layers of gamma~ max|x|^2: median {quantiles[0]:.3g}, 90% {quantiles[1]:.3g}, "
            f"99% {quantiles[2]:.3g}, 99.9% {quantiles[3]:.3g}, max {quantiles[4]:.3g}\n"
            f"examples above 1: {int(np.sum(ratio > 1))}, above 2 (overshooting): {int(np.sum(ratio > 2))}, "
            f"non-finite: {int(np.sum(~np.isfinite(ratio)))}")


def hand_vjp_report(folder: Path, batches: int = 6, batch_size: int = 128, seed: int = 0) -> str:
    """The run's model (final or newest checkpoint) with `model.hand_vjp` on and off, on random training batches:
    the examples each finds non-finite (those `train.drop_nonfinite_examples` leaves out) and the per-example
    gradient difference on the others (`gradient_agreement`)."""
    import dataclasses

    import equinox as eqx

    config, dataset, model = load_run(Path(folder))
    if "hand_vjp" not in getattr(model.field, "config_options", ()):
        raise ConfigError(f"hand-vjp: {folder} has model.field {config.model.field!r}, which has no hand-derived VJP")
    with_vjp = lambda on: eqx.tree_at(lambda m: m.field, model,  # noqa: E731
                                      replace_fn=lambda f: dataclasses.replace(f, hand_vjp=on))
    autodiff, hand_derived, objective = with_vjp(False), with_vjp(True), build_objective(config)
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(batches):
        idx = rng.choice(len(dataset.train.x), batch_size, replace=False)
        parts.append(gradient_agreement(autodiff, hand_derived, objective, dataset.train.x[idx], dataset.train.y[idx]))
    auto, hand = (np.concatenate([p[k] for p in parts]) for k in ("finite_a", "finite_b"))
    rel = np.concatenate([p["rel_diff"] for p in parts])
    return (f"{folder}: {len(auto)} training examples in {batches} random batches\n"
            f"non-finite loss or gradient: autodiff {int(np.sum(~auto))}, hand VJP {int(np.sum(~hand))}, "
            f"on different examples: {int(np.sum(auto != hand))}\n"
            f"per-example gradient |g_hand - g_auto| / |g_auto| where both are finite ({len(rel)}): "
            f"median {np.median(rel):.2e}, 99% {np.quantile(rel, 0.99):.2e}, max {np.max(rel):.2e}")
