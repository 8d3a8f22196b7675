"""Test-set evaluation of a trained run: accuracy and the confusion matrix (§5.2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ode_nets.data import Split


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = number of examples of true class i predicted as class j."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def format_confusion(counts: np.ndarray) -> str:
    """The matrix as text: rows = true class, columns = predicted class."""
    width = max(len(str(counts.max())), 3) + 1
    header = "true\\pred" + "".join(f"{j:>{width}}" for j in range(counts.shape[1]))
    rows = [f"{i:>9}" + "".join(f"{n:>{width}}" for n in row) for i, row in enumerate(counts)]
    return "\n".join([header, *rows])


def evaluate_split(model, split: Split, num_classes: int, batch_size: int = 1000) -> dict:
    """Accuracy and confusion matrix of `model` on `split`.

    Examples whose output is not finite (the explicit solve overflowed) count as errors and are left out of
    the matrix; `non_finite` says how many there were.
    """
    from ode_nets.losses import predicted_class
    from ode_nets.train import predict

    predictions = np.asarray(predicted_class(predict(model, split.x, batch_size)))
    finite = predictions >= 0
    counts = confusion_matrix(split.y[finite], predictions[finite], num_classes)
    return {"accuracy": float(np.trace(counts) / len(split)), "confusion": counts, "n": len(split),
            "non_finite": int(np.sum(~finite))}


def boundary_radii(model, n_angles: int = 72, radii: np.ndarray | None = None) -> np.ndarray:
    """Along `n_angles` rays from the origin, the first radius predicted as class 1 (NaN if none).

    For the circles set (§5.1) this is the learned decision boundary; a circle gives a constant.
    """
    from ode_nets.losses import predicted_class
    from ode_nets.train import predict

    radii = np.linspace(0.3, 3.0, 271) if radii is None else radii
    angles = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False)
    points = np.stack([np.outer(radii, np.cos(angles)), np.outer(radii, np.sin(angles))], -1).reshape(-1, 2)
    outer = np.asarray(predicted_class(predict(model, points.astype(np.float32)))).reshape(len(radii), n_angles) == 1
    first = np.argmax(outer, axis=0)
    return np.where(outer.any(axis=0), radii[first], np.nan)


def evaluate_run(folder: Path) -> dict:
    """Load a run folder (final model, else newest checkpoint) and evaluate it on its test split."""
    from ode_nets.train import RunDirError, load_run

    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise RunDirError(f"{folder} is not a run folder (no config.yaml)")
    config, dataset, model = load_run(folder)
    result = evaluate_split(model, dataset.test, dataset.num_classes, config.train.eval_batch_size)
    if config.data.name == "circles":  # the best any classifier can do on these points, for reference
        from ode_nets.data.circles import bayes_radius, circle_accuracy

        result["bayes_radius"] = bayes_radius(config.data.noise)
        result["bayes_accuracy"] = circle_accuracy(dataset.test.x, dataset.test.y, result["bayes_radius"])
        result["boundary_radii"] = boundary_radii(model)
    return result
