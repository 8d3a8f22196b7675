"""Datasets as NumPy arrays, and `DATASETS`, the registry that names them in configs (`data.name`).

`load_dataset(options, key)` returns a `Dataset` for `options.name` (options: a `DataConfig`, or any object with its
attributes). Generated sets use `key`; MNIST comes from tensorflow-datasets or, offline, from IDX files
(`ode_nets.data.mnist`). To add a data set: write a loader `(options, k_train, k_test) -> Dataset` and add it here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from jaxtyping import PRNGKeyArray

from ode_nets.data import toy
from ode_nets.data._dataset import (Dataset, Split, add_input_noise, batch_indices, carve_validation, check_dataset,
                                    num_batches, random_crop, standardize)
from ode_nets.data.circles import make_circles
from ode_nets.data.digits import load_digits
from ode_nets.data.mnist import load_mnist
from ode_nets.errors import DataError

Loader = Callable[[Any, PRNGKeyArray, PRNGKeyArray], Dataset]


def circles(key: PRNGKeyArray, n_train: int = 400, n_test: int = 1000, noise: float = 0.2) -> Dataset:
    """The concentric circles of §5.1 (radii 1 and 2, Gaussian noise `noise`), drawn from `key` exactly as
    `load_dataset` draws them for `data.name: circles` with the same seed."""
    k_train, k_test, _ = jax.random.split(key, 3)
    return Dataset(Split(*make_circles(k_train, n_train, noise)), Split(*make_circles(k_test, n_test, noise)), 2)


def load_circles(options: Any, k_train: PRNGKeyArray, k_test: PRNGKeyArray) -> Dataset:
    """The `circles` loader: `options.n_train` / `options.n_test` points with Gaussian noise `options.noise`."""
    train = Split(*make_circles(k_train, options.n_train, options.noise))
    test = Split(*make_circles(k_test, options.n_test, options.noise))
    return Dataset(train, test, num_classes=2)


DATASETS: dict[str, Loader] = {
    "circles": load_circles,
    "mnist": lambda options, k_train, k_test: load_mnist(options),
    **{name: toy.load for name in toy.GENERATORS},
    "digits": load_digits,  # scikit-learn's bundled 8x8 digits
}


def load_dataset(options: Any, key: PRNGKeyArray) -> Dataset:
    """The dataset named by `options.name`, its training set cut to `limit_train`, a validation split of
    `validation` examples carved from it and, if asked, every split standardised by the remaining training split's
    mean and std."""
    k_train, k_test, k_val = jax.random.split(key, 3)
    dataset = DATASETS[options.name](options, k_train, k_test)
    if options.limit_train is not None:
        dataset = dataclasses.replace(dataset, train=Split(dataset.train.x[:options.limit_train],
                                                           dataset.train.y[:options.limit_train]))
    dataset = carve_validation(dataset, options.validation, k_val)
    check_dataset(dataset)
    return standardize(dataset) if options.standardize else dataset


__all__ = ["DATASETS", "DataError", "Dataset", "Split", "add_input_noise", "batch_indices", "carve_validation",
           "check_dataset", "load_dataset", "num_batches", "random_crop", "standardize", "load_circles", "circles"]
