"""Datasets as NumPy arrays (`Split`, `Dataset`), validation splits, checks and mini-batching with explicit keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
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
    train: Split
    test: Split
    num_classes: int
    validation: Split | None = None

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
    return Dataset(Split(train.x[rest], train.y[rest]), dataset.test, dataset.num_classes, Split(train.x[val], train.y[val]))


def check_finite(dataset: Dataset) -> None:
    """Refuse data containing NaN or infinity, naming the split and the first bad example."""
    for name, split in (("train", dataset.train), ("test", dataset.test), ("validation", dataset.validation)):
        if split is None:
            continue
        bad = ~np.isfinite(split.x.reshape(len(split), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{name} data contains NaN or infinite values ({int(bad.sum())} examples, first at "
                            f"index {int(np.argmax(bad))}); clean the data source")


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


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
