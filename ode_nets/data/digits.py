"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set, 1,797 images, 10 classes; shipped with the
package, nothing is downloaded): the cheap image set for the PDE-motivated CNNs (docs/pde_cnns.md).

Images are scaled from 0..16 to [0, 1] and shaped (N, 1, 8, 8) like MNIST's (N, 1, 28, 28). The set has no
train/test split: a permutation drawn from the data key puts `n_test` images in the test split and up to
`n_train` of the rest in the training split.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jaxtyping import PRNGKeyArray
from sklearn.datasets import load_digits as sklearn_digits

from ode_nets.data._dataset import Dataset, Split
from ode_nets.errors import DataError

GREY_LEVELS = 16.0


def load_digits(options: Any, k_train: PRNGKeyArray, k_test: PRNGKeyArray) -> Dataset:
    """The `digits` loader: `options.n_test` test images, up to `options.n_train` training images (disjoint)."""
    del k_test
    bunch = sklearn_digits()
    images = (bunch.images / GREY_LEVELS).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int32)
    if options.n_test >= len(images):
        raise DataError(f"data.n_test: digits has {len(images)} images, n_test = {options.n_test} leaves none to train")
    order = np.asarray(jax.random.permutation(k_train, len(images)))
    test, train = order[:options.n_test], order[options.n_test:][:options.n_train]
    return Dataset(Split(images[train], labels[train]), Split(images[test], labels[test]), num_classes=10)
