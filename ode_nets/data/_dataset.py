"""Datasets as NumPy arrays (`Split`, `Dataset`), validation splits, checks and mini-batching with explicit keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ode_nets.errors import DataError


@dataclass(frozen=True)
class Split:
    """Inputs (n, ...) float32 and integer labels (n,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """The splits, the number of classes (labels are 0 .. num_classes - 1), if the source defines one, the
    interval every input value lies in (`input_range`, e.g. (0, 1) for MNIST pixels; None: any finite value), and
    the value of an empty pixel (`background`: what `train.random_crop` shifts in; 0, black, in the source's scale)."""

    train: Split
    test: Split
    num_classes: int
    validation: Split | None = None
    input_range: tuple[float, float] | None = None
    background: float = 0.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def carve_validation(dataset: Dataset, size: int, key: PRNGKeyArray) -> Dataset:
    """Move a random `size` examples of train into a validation split."""
    if size == 0:
        return dataset
    if size >= len(dataset.train):
        raise DataError(f"data.validation = {size} leaves no training data (train has {len(dataset.train)} examples)")
    order = np.asarray(jax.random.permutation(key, len(dataset.train)))
    val, rest = order[:size], order[size:]
    train = dataset.train
    return dataclasses.replace(dataset, train=Split(train.x[rest], train.y[rest]),
                               validation=Split(train.x[val], train.y[val]))


def standardize(dataset: Dataset) -> Dataset:
    """Every split shifted and scaled by the training split's mean and standard deviation (one scalar each, over
    all training values), so the training inputs have mean 0 and std 1; `input_range` and `background` are mapped
    the same way (a black pixel stays black: -mean / std)."""
    mean, std = float(np.mean(dataset.train.x)), float(np.std(dataset.train.x))
    if not std > 0:
        raise DataError(f"data.standardize: the training inputs are constant (std {std}), nothing to scale by")

    def scale(split: Split | None) -> Split | None:
        return None if split is None else Split(((split.x - mean) / std).astype(np.float32), split.y)

    lo_hi = None if dataset.input_range is None else tuple((v - mean) / std for v in dataset.input_range)
    return dataclasses.replace(dataset, train=scale(dataset.train), test=scale(dataset.test),
                               validation=scale(dataset.validation), input_range=lo_hi,
                               background=(dataset.background - mean) / std)


def _first(bad: np.ndarray) -> str:
    """'3 examples, first at index 17' for a boolean mask over examples."""
    count = int(bad.sum())
    return f"{count} example{'s' if count != 1 else ''}, first at index {int(np.argmax(bad))}"


def check_inputs(name: str, x: np.ndarray, input_range: tuple[float, float] | None) -> None:
    """Inputs must be numbers, finite, within float32 and within `input_range` if the source gives one."""
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{name} inputs have dtype {x.dtype}, expected numbers")
    flat = x.reshape(len(x), -1)
    finite = np.isfinite(flat)
    checks = [(~finite, "contain NaN or infinite values"),
              (finite & (np.abs(flat) > np.finfo(np.float32).max), "exceed the float32 range")]
    if input_range is not None:
        lo, hi = input_range
        checks.append(((flat < lo) | (flat > hi), f"lie outside the data set's range [{lo:g}, {hi:g}]"))
    for bad, what in checks:
        if bad.any():
            raise DataError(f"{name} inputs {what} ({_first(bad.any(axis=1))}); clean the data source")


def check_labels(name: str, y: np.ndarray, n: int, num_classes: int) -> None:
    """Labels must be one integer class index 0 .. num_classes - 1 per example."""
    if y.shape != (n,):
        raise DataError(f"{name} labels have shape {y.shape}, expected ({n},): one label per input")
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{name} labels have dtype {y.dtype}, expected integers")
    values = y.astype(np.float64)
    finite = np.isfinite(values)
    for bad, what in ((~finite, "are NaN or infinite"), (finite & (values != np.round(values)), "are not integers"),
                      (finite & ((values < 0) | (values >= num_classes)), f"lie outside 0 .. {num_classes - 1}")):
        if bad.any():
            raise DataError(f"{name} labels {what} ({_first(bad)}: {y[int(np.argmax(bad))].item()}); "
                            f"num_classes = {num_classes}")


def check_dataset(dataset: Dataset) -> None:
    """Refuse data that cannot be trained on, before training: NaN, infinite or out-of-range inputs or labels,
    or inconsistent shapes; the message names the split and the first bad example."""
    for name, split in (("train", dataset.train), ("test", dataset.test), ("validation", dataset.validation)):
        if split is None:
            continue
        if len(split.x) == 0:
            raise DataError(f"the {name} split is empty")
        if split.x.shape[1:] != dataset.train.x.shape[1:]:
            raise DataError(f"{name} inputs have shape {split.x.shape[1:]} per example, train has "
                            f"{dataset.train.x.shape[1:]}")
        check_labels(name, np.asarray(split.y), len(split.x), dataset.num_classes)
        check_inputs(name, np.asarray(split.x), dataset.input_range)


def batch_indices(n: int, batch_size: int, key: PRNGKeyArray | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, mask) per batch, all of length `batch_size`; shuffled with `key` (None: in order).

    The last partial batch is padded by repeating index 0 with mask 0, so every batch has
    one shape and the compiled step is reused; masked examples do not count in the loss.
    """
    order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        mask = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:
            mask[len(idx):] = 0.0
            idx = np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)])
        yield idx, mask


def add_input_noise(x: np.ndarray, sigma: float, key: PRNGKeyArray, rows: slice | None = None,
                    batch_size: int | None = None) -> jax.Array:
    """`x` plus N(0, sigma^2) noise per entry, drawn from `key` (`train.input_noise`).

    Training with input noise is, to first order, Tikhonov regularisation of the network's input
    gradient (Bishop 1995): it pushes the decision boundary away from the training points.
    With `rows`, `x` is only those rows of a batch of `batch_size` (one process's share of a global batch) and gets
    their rows of the whole batch's noise: the same numbers however the batch is split over processes.
    """
    if rows is None:
        return x + sigma * jax.random.normal(key, x.shape, x.dtype)
    return x + sigma * jax.random.normal(key, (batch_size,) + x.shape[1:], x.dtype)[rows]


def random_crop(x: np.ndarray, padding: int, key: PRNGKeyArray, rows: slice | None = None,
                batch_size: int | None = None, fill: float = 0.0) -> jax.Array:
    """Each image of `x` (n, C, H, W) padded with `fill` (the dataset's `background`) by `padding` pixels on every
    side, then cut back to H x W at a random offset drawn from `key` (`train.random_crop`; torchvision's
    `RandomCrop(28, padding=4)` of Chen et al.'s MNIST recipe): a shift of up to `padding` pixels in each direction.
    `rows` / `batch_size` as in `add_input_noise`.
    """
    n, (h, w) = (len(x) if batch_size is None else batch_size), x.shape[-2:]
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    offsets = offsets if rows is None else offsets[rows]
    pad = [(0, 0)] * (x.ndim - 2) + [(padding, padding)] * 2
    padded = jnp.pad(jnp.asarray(x), pad, constant_values=fill)
    lead = x.ndim - 3  # axes before (H, W) of one image: its channels

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (0,) * lead + (offset[0], offset[1]), image.shape[:lead] + (h, w))

    return jax.vmap(crop)(padded, offsets)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
