"""MNIST (§5.2) as NumPy arrays: float32 images (n, 1, 28, 28) in [0, 1] and int32 labels.

Sources, in the order tried for `data.source: auto`:
1. tensorflow-datasets' prepared `array_record` data, read with `tfds.data_source` (no TensorFlow);
   folder: `data.tfds_dir`, else `$TFDS_DATA_DIR`, else tfds' default;
2. the four IDX files (gzip or plain) in `data.dir`, else `$ODE_NETS_DATA_DIR`.
Nothing is cached on disk.
"""

from __future__ import annotations

from typing import Any

import gzip
import os
from pathlib import Path

import numpy as np

from ode_nets.data._dataset import Dataset, Split
from ode_nets.errors import DataError

IMAGES_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------------
# IDX files


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped if it ends in .gz."""
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e} (truncated or corrupt gzip file?)") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """uint8 array from an IDX file, checking the magic number and that the length matches the header."""
    raw = _read_bytes(path)
    ndim = magic - 2048
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise DataError(f"{path}: file is truncated ({len(raw)} bytes, no IDX header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong IDX magic number {found} (expected {magic} for "
                        f"{'images' if magic == IMAGES_MAGIC else 'labels'}); is this the right file?")
    if len(raw) < header:
        raise DataError(f"{path}: file is truncated ({len(raw)} bytes, header needs {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path}: file is {state}: {len(raw)} bytes, header {dims} needs {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def find_idx(folder: Path, stem: str) -> Path | None:
    """`stem.gz` or `stem` in `folder` (None if neither exists)."""
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_split(folder: Path, split: str) -> Split:
    """One split from its IDX image and label files."""
    paths = []
    for stem in IDX_FILES[split]:
        path = find_idx(folder, stem)
        if path is None:
            raise DataError(f"MNIST file {stem}[.gz] not found in {folder}")
        paths.append(path)
    images, labels = read_idx(paths[0], IMAGES_MAGIC), read_idx(paths[1], LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    return to_split(images, labels)


def to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 (n, H, W) or (n, H, W, 1) images -> float32 (n, 1, H, W) in [0, 1]; int32 labels."""
    images = images.reshape(len(images), 1, *images.shape[1:3])
    return Split(images.astype(np.float32) / 255.0, labels.astype(np.int32))


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets


def tfds_split(data_dir: str | None, split: str) -> Split:
    """One split of tfds' prepared MNIST, read in batches through `tfds.data_source` (no TensorFlow)."""
    import tensorflow_datasets as tfds

    source = tfds.data_source("mnist", data_dir=data_dir, download=False)[split]
    images, labels = [], []
    for start in range(0, len(source), 10_000):
        records = source.__getitems__(list(range(start, min(start + 10_000, len(source)))))
        images.append(np.stack([r["image"] for r in records]))
        labels.append(np.array([r["label"] for r in records]))
    return to_split(np.concatenate(images), np.concatenate(labels))


# ---------------------------------------------------------------------------------------------
# the loader


def load_mnist(cfg: Any) -> Dataset:
    """MNIST train (60,000) and test (10,000) from the configured source (see the module docstring)."""
    errors = []
    if cfg.source in ("auto", "tfds"):
        tfds_dir = cfg.tfds_dir or os.environ.get("TFDS_DATA_DIR")
        try:
            return Dataset(tfds_split(tfds_dir, "train"), tfds_split(tfds_dir, "test"), NUM_CLASSES, input_range=(0.0, 1.0))
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - tfds raises many types for "not prepared here"
            errors.append(f"tensorflow-datasets (data_dir {tfds_dir or 'tfds default'}): {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}")
    if cfg.source in ("auto", "idx"):
        folder = cfg.dir or os.environ.get("ODE_NETS_DATA_DIR")
        if folder is not None and Path(folder).is_dir():
            return Dataset(read_idx_split(Path(folder), "train"), read_idx_split(Path(folder), "test"), NUM_CLASSES, input_range=(0.0, 1.0))
        errors.append(f"IDX files: folder {folder!r} " + ("does not exist" if folder else "not set"))
    raise DataError(
        "MNIST not found. Set data.tfds_dir or TFDS_DATA_DIR to a folder holding tfds' prepared mnist/3.0.1/ "
        "(e.g. ../shared/data/tensorflow_datasets), or data.dir or ODE_NETS_DATA_DIR to a folder holding "
        f"{', '.join(s + '[.gz]' for pair in IDX_FILES.values() for s in pair)} (e.g. ../shared/data/mnist). "
        f"Tried: {'; '.join(errors)}")
