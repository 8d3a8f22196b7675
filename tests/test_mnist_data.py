"""MNIST loading: IDX files (gz and plain) read back exactly, malformed files refused with clear
messages, the loader through `load_dataset`, and (if present) the workplace's real data."""

from __future__ import annotations

import gzip
from pathlib import Path

import jax
import numpy as np
import pytest

from ode_nets.config import DataConfig
from ode_nets.data import Dataset, Split, load_dataset, standardize
from ode_nets.data.mnist import IMAGES_MAGIC, LABELS_MAGIC, load_mnist, read_idx, read_idx_split
from ode_nets.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: magic, big-endian dimensions, then the uint8 data."""
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int, *, gz: bool) -> Path:
    data = idx_bytes(array, magic)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def tiny_mnist(folder: Path, *, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    """Four tiny IDX files (28x28 images) in `folder`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
              "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))}
    for prefix, (images, labels) in arrays.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, IMAGES_MAGIC, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, LABELS_MAGIC, gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = tiny_mnist(tmp_path, gz=gz)
    split = read_idx_split(tmp_path, "train")
    images, labels = arrays["train"]
    assert split.x.shape == (12, 1, 28, 28) and split.x.dtype == np.float32
    assert split.y.dtype == np.int32
    np.testing.assert_array_equal(split.x[:, 0] * 255.0, images.astype(np.float32))
    np.testing.assert_array_equal(split.y, labels)
    assert split.x.min() >= 0.0 and split.x.max() <= 1.0


def test_wrong_magic_number(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(5), IMAGES_MAGIC, gz=False)
    with pytest.raises(DataError, match=r"wrong IDX magic number 2051 \(expected 2049"):
        read_idx(path, LABELS_MAGIC)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_names_the_file(tmp_path, gz):
    data = idx_bytes(np.zeros((3, 28, 28)), IMAGES_MAGIC)[:-100]
    path = tmp_path / ("images.gz" if gz else "images")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28)), IMAGES_MAGIC))[:-30])
    with pytest.raises(DataError, match=r"images\.gz"):
        read_idx(path, IMAGES_MAGIC)


def test_mismatched_counts(tmp_path):
    tiny_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11), LABELS_MAGIC, gz=True)
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        read_idx_split(tmp_path, "train")


def test_missing_everything_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("ODE_NETS_DATA_DIR", raising=False)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = DataConfig(name="mnist", source="auto", tfds_dir=str(empty))
    with pytest.raises(DataError) as info:
        load_mnist(cfg)
    for name in ("data.dir", "ODE_NETS_DATA_DIR", "data.tfds_dir", "TFDS_DATA_DIR", "train-images-idx3-ubyte"):
        assert name in str(info.value)
    with pytest.raises(DataError, match="not found in"):  # folder exists, files do not
        load_mnist(DataConfig(name="mnist", source="idx", dir=str(empty)))


def test_load_dataset_from_idx_with_validation_and_limit(tmp_path, monkeypatch):
    arrays = tiny_mnist(tmp_path, gz=False)
    monkeypatch.setenv("ODE_NETS_DATA_DIR", str(tmp_path))
    cfg = DataConfig(name="mnist", source="idx", validation=3, limit_train=10)
    data = load_dataset(cfg, jax.random.PRNGKey(0))
    assert (len(data.train), len(data.validation), len(data.test)) == (7, 3, 5)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    # validation + train are exactly the first 10 training examples, carved without overlap
    images = arrays["train"][0][:10].reshape(10, -1).astype(np.float32) / 255.0
    got = np.concatenate([data.train.x, data.validation.x]).reshape(10, -1)
    assert sorted(map(bytes, got)) == sorted(map(bytes, images))
    np.testing.assert_array_equal(data.test.y, arrays["t10k"][1])


def test_standardize_uses_the_training_statistics_for_every_split(tmp_path, monkeypatch):
    tiny_mnist(tmp_path, gz=False)
    monkeypatch.setenv("ODE_NETS_DATA_DIR", str(tmp_path))
    plain = load_dataset(DataConfig(name="mnist", source="idx", validation=3), jax.random.PRNGKey(0))
    data = load_dataset(DataConfig(name="mnist", source="idx", validation=3, standardize=True), jax.random.PRNGKey(0))
    mean, std = plain.train.x.astype(np.float64).mean(), plain.train.x.astype(np.float64).std()
    assert abs(data.train.x.mean()) < 1e-6 and abs(data.train.x.std() - 1) < 1e-5
    for name in ("train", "validation", "test"):
        np.testing.assert_allclose(getattr(data, name).x, (getattr(plain, name).x - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(getattr(data, name).y, getattr(plain, name).y)
        assert getattr(data, name).x.dtype == np.float32
    np.testing.assert_allclose(data.input_range, (-mean / std, (1 - mean) / std), rtol=1e-6)


def test_standardize_refuses_constant_inputs():
    flat = Dataset(Split(np.ones((4, 3), np.float32), np.zeros(4, np.int32)),
                   Split(np.ones((2, 3), np.float32), np.zeros(2, np.int32)), num_classes=2)
    with pytest.raises(DataError, match="data.standardize.*constant"):
        standardize(flat)


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="workplace MNIST IDX files not present")
def test_real_idx_files():
    data = load_mnist(DataConfig(name="mnist", source="idx", dir=str(SHARED / "mnist")))
    assert data.train.x.shape == (60000, 1, 28, 28) and data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int32
    assert np.bincount(data.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.train.x.max() == 1.0 and data.train.x.min() == 0.0


@pytest.mark.skipif(not (SHARED / "tensorflow_datasets" / "mnist").is_dir(), reason="prepared tfds MNIST not present")
def test_real_tfds_test_split_matches_idx():
    """tfds stores the same test images as the IDX files (in another order): compare as multisets."""
    pytest.importorskip("array_record")
    from ode_nets.data.mnist import tfds_split

    tfds_test = tfds_split(str(SHARED / "tensorflow_datasets"), "test")
    idx_test = read_idx_split(SHARED / "mnist", "test")
    assert tfds_test.x.shape == (10000, 1, 28, 28)

    def keys(split):
        return sorted(bytes(img.astype(np.uint8)) + bytes([lab]) for img, lab in zip(split.x * 255, split.y))
    assert keys(tfds_test) == keys(idx_test)


def test_confusion_matrix_counts():
    from ode_nets.training import confusion_matrix, format_confusion

    counts = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert format_confusion(counts).splitlines()[3].split() == ["2", "1", "0", "2"]


def test_evaluate_script_refuses_a_missing_run_dir(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate", Path(__file__).resolve().parents[1] / "scripts/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run folder" in err[0]
