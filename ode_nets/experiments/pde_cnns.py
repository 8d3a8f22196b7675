"""Experiments of docs/pde_cnns.md: the PDE-motivated CNNs (Ruthotto & Haber 2020) trained at several depths, their
stability constant M against random and adversarial input perturbations (Richter & Lessig 2021 slides), and the
memory of a training step with stored activations vs the reversible (memory-free) gradient.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ode_nets.analysis.stability import (amplification, fgsm, per_example_norm, pgd, random_sign_perturbation,
                                         tanh_toy_flow, toy_matrices)
from ode_nets.build import build_model, build_optimizer, build_run, fit_run, prepare_folder, with_model
from ode_nets.config import Config
from ode_nets.experiments.benchmark import compiled_step, memory_report, time_steps
from ode_nets.losses import accuracy
from ode_nets.models import count_parameters


def summed_loss(model: eqx.Module) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Cross entropy summed over the batch, as a function of the inputs (each example's input gradient is its own)."""
    return lambda x, y: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(model(x), y))


def perturbations(model: eqx.Module, x: jax.Array, y: jax.Array, eps: jax.Array, key: jax.Array, pgd_steps: int
                  ) -> dict[str, jax.Array]:
    """Inputs perturbed by eps in the L-infinity norm: random signs, FGSM, and `pgd_steps` steps of PGD."""
    loss = summed_loss(model)
    return {"random": random_sign_perturbation(key, x, eps), "fgsm": fgsm(loss, x, y, eps),
            "pgd": pgd(loss, x, y, eps, pgd_steps)}


@eqx.filter_jit
def perturbation_record(model: eqx.Module, x: jax.Array, y: jax.Array, eps: jax.Array, key: jax.Array,
                        pgd_steps: int = 5) -> dict[str, jax.Array]:
    """Accuracy on the perturbed inputs and the amplification M (mean, median, max over the examples) of each kind:
    end to end (input -> last stage's Y(T), connective layers included) and of each ODE block alone
    (|Y_s(T) - Y~_s(T)| / |Y_s(0) - Y~_s(0)|, the slides' M of that block's flow)."""
    record = {}
    clean = model.stage_states(x)
    for kind, x_tilde in perturbations(model, x, y, eps, key, pgd_steps).items():
        m = amplification(model.features, x, x_tilde)
        record.update({f"{kind}_acc": accuracy(model(x_tilde), y), f"{kind}_M_mean": jnp.mean(m),
                       f"{kind}_M_median": jnp.median(m), f"{kind}_M_max": jnp.max(m)})
        for s, ((y0, y1), (z0, z1)) in enumerate(zip(clean, model.stage_states(x_tilde))):
            block = per_example_norm(z1 - y1) / per_example_norm(z0 - y0)
            record.update({f"{kind}_block{s}_M_mean": jnp.mean(block), f"{kind}_block{s}_M_max": jnp.max(block)})
    return record


def stability_records(model: eqx.Module, x: np.ndarray, y: np.ndarray, eps_values: list[float], seed: int = 0,
                      pgd_steps: int = 5, batch_size: int = 200) -> list[dict[str, float]]:
    """`perturbation_record` for each eps, averaged over batches of the examples (x, y); clean accuracy beside it."""
    clean = float(np.mean([accuracy(model(jnp.asarray(x[i:i + batch_size])), jnp.asarray(y[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)]))
    records = []
    for e, eps in enumerate(eps_values):
        batches = []
        for b, i in enumerate(range(0, len(x), batch_size)):
            key = jax.random.fold_in(jax.random.PRNGKey(seed), e * 1000 + b)
            out = perturbation_record(model, jnp.asarray(x[i:i + batch_size]), jnp.asarray(y[i:i + batch_size]),
                                      jnp.asarray(eps), key, pgd_steps)  # eps an array: one compilation for all
            batches.append((len(x[i:i + batch_size]), {k: float(v) for k, v in out.items()}))
        records.append({"eps": eps, "clean_acc": clean, **combine_batches(batches)})
    return records


def combine_batches(batches: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Example-weighted means over batches; maxima for the `_M_max` entries (medians: weighted mean of medians)."""
    total = sum(n for n, _ in batches)
    keys = batches[0][1]
    return {k: (max(r[k] for _, r in batches) if k.endswith("_M_max") else sum(n * r[k] for n, r in batches) / total)
            for k in keys}


def step_cost(config: Config, input_shape: tuple[int, ...], num_classes: int, batch_size: int, steps: int = 5
              ) -> dict[str, Any]:
    """One compiled training step of `config`'s model on a zero batch: XLA's peak memory (bytes) and the median wall
    time of `steps` steps after one warm-up (no data needed)."""
    model = build_model(config, input_shape, num_classes, jax.random.PRNGKey(config.seed))
    example = (jnp.zeros((batch_size, *input_shape)), jnp.zeros(batch_size, jnp.int32), jnp.ones(batch_size))
    compiled, params, opt_state, _ = compiled_step(model, build_optimizer(config.optim, 1), 0.0, example)
    times = time_steps(compiled, params, opt_state, example, warmup=1, steps=steps)
    return {"memory": memory_report(compiled), "step_median_s": float(np.median(times))}


def depth_config(config: Config, layers: int, **model_changes: Any) -> Config:
    """`config` with `layers` layers per stage (same horizon T, so h = T / layers) and a name saying so."""
    return dataclasses.replace(with_model(config, layers=layers, **model_changes), name=f"{config.name}_L{layers}")


def train_depth(config: Config, folder: Path, progress: bool = False) -> dict[str, Any]:
    """Train `config` into `folder` (replacing it) and return its results with the time per epoch and parameters."""
    prepare_folder(folder, config, overwrite=True, resume=False)
    run = build_run(config, folder)
    results = fit_run(run, progress=progress)
    return {"name": config.name, "field": config.model.field, "layers": config.model.layers,
            "strategy": config.gradient.strategy, "parameters": count_parameters(run.model),
            "test_acc": results["test_acc"], "train_wall_time_s": results["train_wall_time_s"],
            "time_per_epoch_s": results["train_wall_time_s"] / config.train.epochs, "folder": str(folder),
            "input_shape": list(run.dataset.input_shape), "num_classes": run.dataset.num_classes}


def write_json(records: Any, path: Path) -> Path:
    """`records` as indented JSON at `path` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path


# ---------------------------------------------------------------------------------------------
# The three studies, each writing JSON and figures into an output folder (scripts/pde_cnns.py).

TWO_STATE_STRATEGIES = ("reversible", "discretize_then_optimize")


def depth_study(configs: list[Config], layers: tuple[int, ...], out: Path, progress: bool = False,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Each config trained at each depth (layers per stage) with its own epochs (the same budget for all), plus the
    compiled step's peak memory and median time; for Verlet fields the step is also measured with stored
    activations (`discretize_then_optimize`) beside the reversible one. Written to `out/depth.json`."""
    records = []
    for config in configs:
        for n in layers:
            cfg = depth_config(config, n)
            record = train_depth(cfg, out / "runs" / cfg.name, progress)
            record["epochs"] = cfg.train.epochs
            for strategy in strategies_to_measure(cfg):
                cost = step_cost(dataclasses.replace(cfg, gradient=dataclasses.replace(cfg.gradient, strategy=strategy)),
                                 tuple(record["input_shape"]), record["num_classes"], cfg.train.batch_size)
                record[f"{strategy}_peak_MiB"] = cost["memory"].get("peak", 0) / 2 ** 20
                record[f"{strategy}_step_ms"] = 1e3 * cost["step_median_s"]
            log(json.dumps(record))
            records.append(record)
            write_json(records, out / "depth.json")
    return records


def strategies_to_measure(config: Config) -> tuple[str, ...]:
    """The strategy trained with, and for a reversible config also stored activations, for the memory comparison."""
    if config.gradient.strategy == "reversible":
        return TWO_STATE_STRATEGIES
    return (config.gradient.strategy,)


def depth_table(records: list[dict[str, Any]]) -> str:
    """Markdown: field, layers per stage, parameters, test accuracy, time per epoch, step time and memory."""
    lines = ["| field | layers / stage | parameters | test acc. | train time / epoch (s) | step (ms) | peak memory "
             "(MiB), trained strategy | peak memory (MiB), stored activations |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        strategy = r["strategy"]
        stored = r.get("discretize_then_optimize_peak_MiB", float("nan"))
        lines.append(f"| {r['field']} | {r['layers']} | {r['parameters']:,} | {100 * r['test_acc']:.1f} % | "
                     f"{r['time_per_epoch_s']:.1f} | {r[f'{strategy}_step_ms']:.1f} | "
                     f"{r[f'{strategy}_peak_MiB']:.2f} ({strategy}) | {stored:.2f} |")
    return "\n".join(lines)


def stability_study(runs: dict[str, tuple[eqx.Module, Any]], eps_values: list[float], examples: int, out: Path,
                    pgd_steps: int = 5, log: Callable[[str], None] = print) -> dict[str, list[dict[str, float]]]:
    """`stability_records` on the first `examples` test images of each run (name -> (model, dataset)), written to
    `out/stability.json`."""
    results = {}
    for name, (model, dataset) in runs.items():
        x, y = dataset.test.x[:examples], dataset.test.y[:examples]
        results[name] = stability_records(model, x, y, eps_values, pgd_steps=pgd_steps)
        log(f"{name}: " + json.dumps(results[name]))
        write_json(results, out / "stability.json")
    return results


def stability_table(results: dict[str, list[dict[str, float]]], eps: float) -> str:
    """Markdown: for each run at perturbation size `eps`, clean accuracy, accuracy and mean M per perturbation kind."""
    lines = [f"| run | clean acc. | random: acc. / mean M | FGSM: acc. / mean M | PGD: acc. / mean M | (eps = {eps}) |",
             "|---|---|---|---|---|---|"]
    for name, records in results.items():
        r = min(records, key=lambda rec: abs(rec["eps"] - eps))
        cells = [f"{100 * r[f'{k}_acc']:.1f} % / {r[f'{k}_M_mean']:.2f}" for k in ("random", "fgsm", "pgd")]
        lines.append(f"| {name} | {100 * r['clean_acc']:.1f} % | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def toy_flows(layers: int = 20, h: float = 0.1, scale: float = 2.0, points: int = 21, seed: int = 0
              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The slides' 20-layer toy (sigma = tanh, b = 0, 2-D) on a grid of points in [-1, 1]^2: a random ResNet and the
    antisymmetric network made from the same random matrices. Returns the flows (L+1, P, 2) and a colour per point."""
    u = jnp.linspace(-1.0, 1.0, points)
    grid = jnp.stack(jnp.meshgrid(u, u), -1).reshape(-1, 2)
    key = jax.random.PRNGKey(seed)
    flows = {"random ResNet": tanh_toy_flow(toy_matrices(key, layers, scale), grid, h),
             "antisymmetric": tanh_toy_flow(toy_matrices(key, layers, scale, antisymmetric=True), grid, h)}
    return {k: np.asarray(v) for k, v in flows.items()}, np.asarray(grid[:, 0] + 2 * grid[:, 1])


def toy_amplification(flow: np.ndarray, points: int) -> dict[str, float]:
    """M over neighbouring grid points (horizontal and vertical pairs): |y_a(T) - y_b(T)| / |y_a(0) - y_b(0)|."""
    start, end = flow[0].reshape(points, points, 2), flow[-1].reshape(points, points, 2)
    ratios = [np.linalg.norm(np.diff(end, axis=a), axis=-1) / np.linalg.norm(np.diff(start, axis=a), axis=-1)
              for a in (0, 1)]
    m = np.concatenate([r.ravel() for r in ratios])
    return {"M_min": float(m.min()), "M_median": float(np.median(m)), "M_max": float(m.max())}


def combined_table(depth_records: list[dict[str, Any]], stability: dict[str, list[dict[str, float]]], eps: float) -> str:
    """Markdown, one row per trained network: field, layers per stage, parameters, test accuracy, mean M (random and
    PGD perturbations) and the accuracy under FGSM and PGD at perturbation size `eps`, time per epoch and memory."""
    lines = [f"| field | layers / stage | parameters | test acc. | M random | M PGD | block M PGD (stage 1 / 2 / 3) | "
             f"acc. FGSM | acc. PGD | train time / epoch (s) | step peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in depth_records:
        records = stability.get(r["name"])
        if not records:
            continue
        s = min(records, key=lambda rec: abs(rec["eps"] - eps))
        memory = r[f"{r['strategy']}_peak_MiB"]
        blocks = " / ".join(f"{s[k]:.2f}" for k in sorted(s) if k.startswith("pgd_block") and k.endswith("_M_mean"))
        lines.append(f"| {r['field']} | {r['layers']} | {r['parameters']:,} | {100 * r['test_acc']:.1f} % | "
                     f"{s['random_M_mean']:.2f} | {s['pgd_M_mean']:.2f} | {blocks} | {100 * s['fgsm_acc']:.1f} % | "
                     f"{100 * s['pgd_acc']:.1f} % | {r['time_per_epoch_s']:.1f} | {memory:.1f} |")
    return "\n".join(lines)


def memory_table(records: list[dict[str, Any]]) -> str:
    """Markdown: for the reversible runs, XLA peak memory and step time of the reversible and the stored gradient."""
    lines = ["| field | layers / stage | reversible: peak MiB / step ms | stored activations: peak MiB / step ms |",
             "|---|---|---|---|"]
    for r in records:
        if "reversible_peak_MiB" in r and "discretize_then_optimize_peak_MiB" in r:
            lines.append(f"| {r['field']} | {r['layers']} | {r['reversible_peak_MiB']:.1f} / {r['reversible_step_ms']:.0f}"
                         f" | {r['discretize_then_optimize_peak_MiB']:.1f} / {r['discretize_then_optimize_step_ms']:.0f} |")
    return "\n".join(lines)
