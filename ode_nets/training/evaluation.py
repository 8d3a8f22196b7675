"""Evaluation of a model called as `model(x) -> logits`: accuracy, loss, non-finite count, confusion matrix.

One implementation (`evaluate`, over the batches of `step.eval_step`) serves the per-epoch metrics of
training, `results.json` and `scripts/evaluate.py`. An example is *non-finite* when its logits are not all
finite or its cross entropy is not (the explicit solve overflowed): it counts as an error in the accuracy,
is left out of the loss (the mean over the finite examples; NaN if none is) and out of the confusion matrix,
and is counted in `non_finite`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from ode_nets.data import Dataset, Split, batch_indices
from ode_nets.data.circles import bayes_radius, circle_accuracy
from ode_nets.losses import predicted_class
from ode_nets.training.step import eval_step


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


def evaluate(model: eqx.Module, split: Split, batch_size: int, num_classes: int | None = None) -> dict:
    """`loss` (mean cross entropy over the finite examples), `acc` (non-finite ones are errors), `non_finite`,
    and with `num_classes` the `confusion` matrix of the finite examples."""
    batch_size = min(batch_size, len(split))
    total_loss, total_correct, non_finite, labels, predictions = 0.0, 0.0, 0.0, [], []
    for idx, mask in batch_indices(len(split), batch_size, None):
        (loss, correct, bad), predicted = eval_step(model, split.x[idx], split.y[idx], mask)
        total_loss += float(loss)
        total_correct += float(correct)
        non_finite += float(bad)
        if num_classes is not None:
            labels.append(split.y[idx][mask > 0])
            predictions.append(np.asarray(predicted)[mask > 0])
    finite = len(split) - non_finite
    out = {"loss": total_loss / finite if finite else float("nan"), "acc": total_correct / len(split),
           "non_finite": int(non_finite)}
    if num_classes is not None:
        labels, predictions = np.concatenate(labels), np.concatenate(predictions)
        out["confusion"] = confusion_matrix(labels[predictions >= 0], predictions[predictions >= 0], num_classes)
    return out


def evaluate_split(model: eqx.Module, split: Split, num_classes: int, batch_size: int = 1000) -> dict:
    """`accuracy`, `confusion` matrix, `n`, `non_finite` and `loss` of `model` on `split` (see `evaluate`)."""
    m = evaluate(model, split, batch_size, num_classes)
    return {"accuracy": m["acc"], "confusion": m["confusion"], "n": len(split), "non_finite": m["non_finite"],
            "loss": m["loss"]}


def split_metrics(model: eqx.Module, dataset: Dataset, batch_size: int = 1000,
                  train_examples: int | None = None) -> dict[str, float]:
    """`<split>_loss`, `<split>_acc` on train (its first `train_examples`), validation and test, and
    `<split>_non_finite` where some examples were non-finite."""
    out = {}
    train = dataset.train
    if train_examples is not None and train_examples < len(train):
        train = Split(train.x[:train_examples], train.y[:train_examples])
    for name, split in (("train", train), ("validation", dataset.validation), ("test", dataset.test)):
        if split is not None:
            m = evaluate(model, split, batch_size)
            out[f"{name}_loss"], out[f"{name}_acc"] = m["loss"], m["acc"]
            if m["non_finite"]:
                out[f"{name}_non_finite"] = m["non_finite"]
    return out


@eqx.filter_jit
def _probabilities(model: eqx.Module, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(x), -1)


def predict(model: eqx.Module, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities for all of `x`, (n, classes); one compiled function shared by all calls."""
    chunks = [np.asarray(_probabilities(model, x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate(chunks)


def boundary_radii(model: eqx.Module, n_angles: int = 72, radii: np.ndarray | None = None) -> np.ndarray:
    """Along `n_angles` rays from the origin, the first radius predicted as class 1 (NaN if none).

    For the circles set (§5.1) this is the learned decision boundary; a circle gives a constant.
    """
    radii = np.linspace(0.3, 3.0, 271) if radii is None else radii
    angles = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False)
    points = np.stack([np.outer(radii, np.cos(angles)), np.outer(radii, np.sin(angles))], -1).reshape(-1, 2)
    outer = np.asarray(predicted_class(predict(model, points.astype(np.float32)))).reshape(len(radii), n_angles) == 1
    first = np.argmax(outer, axis=0)
    return np.where(outer.any(axis=0), radii[first], np.nan)


def learned_gamma(model: eqx.Module) -> float | None:
    """The scaled nonlinearity gamma~ of the field, if it has one."""
    gamma = getattr(getattr(model, "field", None), "gamma", None)
    return None if gamma is None else float(gamma)


def evaluate_test(model: eqx.Module, dataset: Dataset, batch_size: int = 1000,
                  circles_noise: float | None = None) -> dict:
    """`evaluate_split` on the test split; with `circles_noise` (circles data) also the Bayes classifier's
    `bayes_radius`/`bayes_accuracy` on the same points and the model's `boundary_radii`, for reference."""
    result = evaluate_split(model, dataset.test, dataset.num_classes, batch_size)
    if circles_noise is not None:

        result["bayes_radius"] = bayes_radius(circles_noise)
        result["bayes_accuracy"] = circle_accuracy(dataset.test.x, dataset.test.y, result["bayes_radius"])
        result["boundary_radii"] = boundary_radii(model)
    return result
