"""Tests for cnncc.data: IDX parsing, MNIST loading/downloading, synthetic data, .npz files."""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from cnncc import data
from cnncc.data import DataError

# The real MNIST files: $CNNCC_MNIST_DIR, else /work/shared/data/mnist next to the repo.
REAL_MNIST_DIR = Path(os.environ.get("CNNCC_MNIST_DIR")
                      or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
HAVE_REAL_MNIST = all((REAL_MNIST_DIR / name).is_file() for name in data.MNIST_MD5)
needs_real_mnist = pytest.mark.skipif(
    not HAVE_REAL_MNIST,
    reason=f"real MNIST .gz files not found in {REAL_MNIST_DIR} (set CNNCC_MNIST_DIR)")


def idx_bytes(array, *, magic_prefix=b"\0\0", type_byte=0x08) -> bytes:
    """Encode a uint8 array as an IDX file, with optionally faulty header fields."""
    array = np.asarray(array, dtype=np.uint8)
    header = magic_prefix + bytes([type_byte, array.ndim])
    header += struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()


def write(path: Path, payload: bytes, *, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_mnist(directory: Path, n_train=5, n_test=3, *, gz=False, images_hw=(28, 28),
                train_labels=None, test_labels=None) -> Path:
    """A tiny fake MNIST in `directory` (valid unless an argument makes it invalid)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    files = data.MNIST_FILES
    for split, n, labels in (("train", n_train, train_labels), ("test", n_test, test_labels)):
        images = rng.integers(0, 256, size=(n, *images_hw), dtype=np.uint8)
        labels = np.arange(n) % 10 if labels is None else np.asarray(labels)
        write(directory / (files[f"{split}_images"] + suffix), idx_bytes(images), gz=gz)
        write(directory / (files[f"{split}_labels"] + suffix), idx_bytes(labels), gz=gz)
    return directory


# --------------------------------------------------------------------------- read_idx

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 5), (0, 28, 28)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    array = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    path = write(tmp_path / ("f.idx.gz" if gz else "f.idx"), idx_bytes(array), gz=gz)
    got = data.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == shape
    np.testing.assert_array_equal(got, array)


def test_read_idx_detects_gzip_by_magic_bytes(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write(tmp_path / "no-gz-suffix", idx_bytes(array), gz=True)
    np.testing.assert_array_equal(data.read_idx(path), array)


@pytest.mark.parametrize("payload, expected_message", [
    (idx_bytes([1, 2], magic_prefix=b"\x12\x34"), "not an IDX file"),
    (b"", "not an IDX file"),
    (idx_bytes([1, 2], type_byte=0x0D), "unsupported IDX data type 0x0d"),
    (b"\0\0\x08\x00", "0 dimensions"),
    (b"\0\0\x08\x02\0\0\0\x02", "header truncated"),
    (b"\0\0\x08\x01\xff\xff\xff\xff", "negative dimension"),
    (idx_bytes(np.zeros((4, 5)))[:-3], "truncated: shape (4, 5) needs 20 data bytes, got 17"),
    (idx_bytes(np.zeros((4, 5))) + b"xy",
     "trailing bytes: shape (4, 5) needs 20 data bytes, got 22"),
])
def test_read_idx_rejects_malformed_files(tmp_path, payload, expected_message):
    path = write(tmp_path / "bad.idx", payload)
    with pytest.raises(DataError, match="bad.idx") as info:
        data.read_idx(path)
    assert expected_message in str(info.value)


@pytest.mark.parametrize("corrupt", [
    lambda gz: gz[: len(gz) // 2],                               # truncated download
    lambda gz: gz[:20] + bytes(b ^ 0xFF for b in gz[20:40]) + gz[40:],  # flipped bits
    lambda gz: b"definitely not gzip",                           # .gz name, not gzip
])
def test_read_idx_reports_corrupt_gzip_as_data_error(tmp_path, corrupt):
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(10, 20)))
    path = write(tmp_path / "images.gz", corrupt(good))
    with pytest.raises(DataError, match=r"images\.gz.*(gzip|IDX)"):
        data.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read file"):
        data.read_idx(tmp_path / "nope.idx")


# --------------------------------------------------------------------------- load_mnist (fake)

@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_small_files(tmp_path, gz):
    directory = write_mnist(tmp_path / "m", n_train=12, n_test=4, gz=gz)
    (x_train, y_train), (x_test, y_test) = data.load_mnist(directory)
    assert x_train.shape == (12, 1, 28, 28) and x_test.shape == (4, 1, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    raw = data.read_idx(directory / (data.MNIST_FILES["train_images"] + (".gz" if gz else "")))
    np.testing.assert_allclose(x_train[:, 0], raw / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_test, np.arange(4))
    assert data.find_mnist_dir(directory) == directory


def test_load_mnist_rejects_count_mismatch(tmp_path):
    directory = write_mnist(tmp_path, n_train=5, train_labels=np.arange(4))
    with pytest.raises(DataError, match="holds 5 images but .* holds 4 labels"):
        data.load_mnist(directory)


def test_load_mnist_rejects_label_out_of_range(tmp_path):
    directory = write_mnist(tmp_path, n_test=3, test_labels=[1, 10, 2])
    with pytest.raises(DataError, match=r"t10k-labels.*label 10 out of range.*0\.\.9"):
        data.load_mnist(directory)


def test_load_mnist_rejects_wrong_image_size(tmp_path):
    directory = write_mnist(tmp_path, images_hw=(28, 27))
    with pytest.raises(DataError, match="images are 28x27 .expected 28x28"):
        data.load_mnist(directory)


def test_load_mnist_rejects_wrong_magic(tmp_path):
    directory = write_mnist(tmp_path)
    labels_path = directory / data.MNIST_FILES["train_labels"]
    # A label file with 2 dimensions has magic 2050, not 2049.
    write(labels_path, idx_bytes(np.zeros((5, 1))))
    with pytest.raises(DataError, match="not an MNIST label file.*2049.*got magic 2050 with 2"):
        data.load_mnist(directory)


def test_load_mnist_missing_files_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as info:
        data.load_mnist(tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty") in message
    assert "train-images-idx3-ubyte" in message
    assert "download_mnist" in message and "CNNCC_MNIST_DIR" in message


def test_load_mnist_rejects_bad_limit(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        data.load_mnist(write_mnist(tmp_path), limit=0)


def test_find_mnist_dir_explicit_and_env(tmp_path, monkeypatch):
    assert data.find_mnist_dir(tmp_path) is None  # explicit dir without the files
    directory = write_mnist(tmp_path / "via-env")
    monkeypatch.setenv("CNNCC_MNIST_DIR", str(directory))
    assert data.find_mnist_dir() == directory
    (x_train, _), _ = data.load_mnist()
    assert len(x_train) == 5


def test_find_mnist_dir_searches_cwd_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNCC_MNIST_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path / "data" / "mnist")
    assert data.find_mnist_dir() == Path("data/mnist")


# --------------------------------------------------------------------------- real MNIST

@pytest.fixture(scope="module")
def real_mnist():
    if not HAVE_REAL_MNIST:
        pytest.skip(f"real MNIST .gz files not found in {REAL_MNIST_DIR} (set CNNCC_MNIST_DIR)")
    return data.load_mnist(REAL_MNIST_DIR)


def test_real_mnist_shapes_and_values(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.bincount(y_train, minlength=10).sum() == 60000
    assert (np.bincount(y_test, minlength=10) > 800).all()  # every digit well represented
    assert y_train[0] == 5 and y_test[0] == 7  # the well-known first labels


@needs_real_mnist
def test_real_mnist_limit(real_mnist):
    (x_train, y_train), (x_test, y_test) = data.load_mnist(REAL_MNIST_DIR, limit=100)
    assert x_train.shape == (100, 1, 28, 28) and y_test.shape == (100,)
    (full_x, full_y), _ = real_mnist
    np.testing.assert_array_equal(x_train, full_x[:100])
    np.testing.assert_array_equal(y_train, full_y[:100])


# --------------------------------------------------------------------------- download_mnist

class RecordingFetch:
    """A stand-in for the network: serves given bytes per file name and counts calls."""

    def __init__(self, serve):
        self.serve, self.urls = serve, []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.serve(url.rsplit("/", 1)[-1])


def real_bytes(name: str) -> bytes:
    return (REAL_MNIST_DIR / name).read_bytes()


@needs_real_mnist
def test_download_mnist_writes_verified_files_once(tmp_path):
    fetch = RecordingFetch(real_bytes)
    directory = data.download_mnist(tmp_path / "mnist", fetch=fetch,
                                    base_url="https://example.invalid/mnist")
    assert directory == tmp_path / "mnist"
    assert sorted(fetch.urls) == sorted(f"https://example.invalid/mnist/{n}"
                                        for n in data.MNIST_MD5)
    assert sorted(p.name for p in directory.iterdir()) == sorted(data.MNIST_MD5)
    for name, md5 in data.MNIST_MD5.items():
        assert hashlib.md5((directory / name).read_bytes()).hexdigest() == md5
    data.download_mnist(directory, fetch=fetch)
    assert len(fetch.urls) == 4  # everything present and verified: nothing fetched again
    assert data.find_mnist_dir(directory) == directory


@needs_real_mnist
def test_download_mnist_replaces_file_with_wrong_content(tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    for other in data.MNIST_MD5:
        (tmp_path / other).write_bytes(b"stale" if other == name else real_bytes(other))
    fetch = RecordingFetch(real_bytes)
    data.download_mnist(tmp_path, fetch=fetch)
    assert [url.rsplit("/", 1)[-1] for url in fetch.urls] == [name]
    assert (tmp_path / name).read_bytes() == real_bytes(name)


def test_download_mnist_corrupt_fetch_writes_nothing(tmp_path):
    fetch = RecordingFetch(lambda name: b"<html>rate limited</html>")
    with pytest.raises(DataError) as info:
        data.download_mnist(tmp_path / "mnist", fetch=fetch)
    first = next(iter(data.MNIST_MD5))
    message = str(info.value)
    assert first in message and data.MNIST_MD5[first] in message
    assert hashlib.md5(b"<html>rate limited</html>").hexdigest() in message
    assert list((tmp_path / "mnist").iterdir()) == []  # no file, no leftover temp file


@needs_real_mnist
def test_download_mnist_default_fetch_via_file_url(tmp_path):
    # urllib also serves file:// URLs, so the real (non-injected) fetch path runs offline.
    data.download_mnist(tmp_path, base_url=REAL_MNIST_DIR.resolve().as_uri())
    assert all((tmp_path / name).read_bytes() == real_bytes(name) for name in data.MNIST_MD5)


def test_download_mnist_default_fetch_failure_is_data_error(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        data.download_mnist(tmp_path / "out", base_url=(tmp_path / "nowhere").as_uri())
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic():
    first = data.synthetic(n_train=300, n_test=100, seed=3)
    second = data.synthetic(n_train=300, n_test=100, seed=3)
    other = data.synthetic(n_train=300, n_test=100, seed=4)
    for a, b in zip([*first[0], *first[1]], [*second[0], *second[1]]):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert not np.array_equal(first[0][0], other[0][0])


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 20), (1, 64), (2, 50)])
def test_synthetic_format(shape):
    (x_train, y_train), (x_test, y_test) = data.synthetic(shape, classes=4, n_train=203,
                                                          n_test=40)
    assert x_train.shape == (203, *shape) and x_test.shape == (40, *shape)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.std() > 0.05
    counts = np.bincount(y_train, minlength=4)
    assert len(counts) == 4 and counts.max() - counts.min() <= 1  # balanced
    assert set(np.unique(y_test)) == {0, 1, 2, 3}


def test_synthetic_default_size_is_mnist_like():
    (x_train, y_train), (x_test, _) = data.synthetic()
    assert x_train.shape == (6000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert set(np.unique(y_train)) == set(range(10))


@pytest.mark.parametrize("bad", [
    dict(shape=(28, 28, 1, 1)), dict(shape=(28,)), dict(shape=(1, 0, 28)),
    dict(shape=(1, 2.5, 3)), dict(shape="1x28x28"), dict(classes=1),
    dict(n_train=0), dict(n_test=-1), dict(seed=1.5), dict(seed=-1),
])
def test_synthetic_validates_arguments(bad):
    with pytest.raises(ValueError):
        data.synthetic(**bad)


def train_softmax_regression(x, y, classes, steps=60, learning_rate=0.5):
    """Full-batch gradient descent on the cross-entropy of a linear softmax classifier."""
    features = x.reshape(len(x), -1)
    mean = features.mean(axis=0)
    weights = np.zeros((features.shape[1], classes), dtype=np.float32)
    bias = np.zeros(classes, dtype=np.float32)
    one_hot = np.eye(classes, dtype=np.float32)[y]
    for _ in range(steps):
        logits = (features - mean) @ weights + bias
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        grad = (probs - one_hot) / len(features)
        weights -= learning_rate * (features - mean).T @ grad
        bias -= learning_rate * grad.sum(axis=0)
    return lambda inputs: ((inputs.reshape(len(inputs), -1) - mean) @ weights + bias).argmax(1)


def test_synthetic_is_learnable_but_classes_differ():
    (x_train, y_train), (x_test, y_test) = data.synthetic(n_train=3000, n_test=1000)
    class_means = np.stack([x_train[y_train == k].mean(axis=0).ravel() for k in range(10)])
    distances = np.linalg.norm(class_means[:, None] - class_means[None, :], axis=2)
    assert distances[~np.eye(10, dtype=bool)].min() > 1.0  # no two classes look alike
    predict = train_softmax_regression(x_train, y_train, classes=10)
    accuracy = (predict(x_test) == y_test).mean()
    assert accuracy > 0.8, f"softmax regression reached only {accuracy:.1%} test accuracy"


# --------------------------------------------------------------------------- load_npz

def test_load_npz_with_test_split(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.ones((6, 2, 3), dtype=np.uint8),
             y_train=np.arange(6, dtype=np.int32),
             x_test=np.zeros((2, 2, 3)), y_test=np.array([0.5, 1.5]))
    (x_train, y_train), (x_test, y_test) = data.load_npz(path)
    assert x_train.dtype == x_test.dtype == np.float32 and x_train.shape == (6, 2, 3)
    assert y_train.dtype == np.int64 and y_test.dtype == np.float32  # labels vs targets
    np.testing.assert_array_equal(y_train, np.arange(6))


def test_load_npz_without_test_split_holds_out_a_seeded_stratified_tenth(tmp_path):
    # Sorted by class, as many datasets are: the last tenth would be all class 3.
    labels = np.repeat(np.arange(4), 50)
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x_train=np.arange(400.0).reshape(200, 2), y_train=labels)
    notes = []
    (x_train, y_train), (x_test, y_test) = data.load_npz(path, notes=notes)
    assert len(x_train) == 180 and len(x_test) == 20
    assert np.bincount(y_test).tolist() == [5, 5, 5, 5]  # every class keeps its share
    np.testing.assert_array_equal(x_test[:, 0] // 100, y_test)  # samples stay with their labels
    assert sorted(np.concatenate([x_train[:, 0], x_test[:, 0]]).tolist()) == list(range(0, 400, 2))
    assert any("held out 20 of 200 samples" in note and "stratified by class, seed 0" in note for note in notes)
    (_, _), (again, _) = data.load_npz(path)
    np.testing.assert_array_equal(again, x_test)  # the same split every time
    (_, _), (other, _) = data.load_npz(path, seed=1)
    assert not np.array_equal(other, x_test)


def test_load_npz_scales_uint8_pixels_and_says_so(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.full((4, 1, 2, 2), 255, np.uint8), y_train=np.arange(4),
             x_test=np.zeros((1, 1, 2, 2), np.uint8), y_test=np.zeros(1, int))
    notes = []
    (x_train, _), _ = data.load_npz(path, notes=notes)
    assert x_train.dtype == np.float32 and x_train.max() == 1.0
    assert notes == [f"{path}: x_train is uint8: scaled to [0, 1] (divided by 255)"]


@pytest.mark.parametrize("arrays, expected_message", [
    (dict(x_train=np.ones((4, 2))), "missing array(s) y_train"),
    (dict(x_train=np.ones((4, 2)), y_train=np.ones(4), x_test=np.ones((1, 2))), "y_test"),
    (dict(x_train=np.ones((4, 2)), y_train=np.ones(3)), "x_train has 4 samples but y_train has 3"),
    (dict(x_train=np.ones((4, 2)), y_train=np.ones(4), x_test=np.ones((2, 3)),
          y_test=np.ones(2)), "x_test samples have shape (3,)"),
    (dict(x_train=np.array([["a", "b"]] * 4), y_train=np.ones(4)), "expected a numeric array"),
    (dict(x_train=np.ones(4), y_train=np.ones(4)), "at least one feature axis"),
    (dict(x_train=np.ones((0, 2)), y_train=np.ones(0), x_test=np.ones((1, 2)),
          y_test=np.ones(1)), "N >= 1 samples"),
    (dict(x_train=np.full((4, 2), np.nan), y_train=np.ones(4)), "NaN or infinite"),
    (dict(x_train=np.ones((1, 2)), y_train=np.ones(1)), "need at least 2"),
])
def test_load_npz_rejects_bad_contents(tmp_path, arrays, expected_message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="bad.npz") as info:
        data.load_npz(path)
    assert expected_message in str(info.value)


def test_load_npz_rejects_object_arrays_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x_train=np.array([{"a": 1}] * 3, dtype=object), y_train=np.ones(3))
    with pytest.raises(DataError, match="x_train"):
        data.load_npz(path)


def write_broken_npz(path: Path, kind: str) -> None:
    if kind == "not a zip":
        path.write_bytes(b"this is not a zip file at all")
    elif kind == "truncated zip":
        np.savez(path, x_train=np.ones((5, 2)), y_train=np.arange(5))
        path.write_bytes(path.read_bytes()[:-40])
    elif kind == "corrupt member":  # a valid zip directory, but damaged array data
        np.savez(path, x_train=np.arange(4000.0).reshape(1000, 4), y_train=np.arange(1000))
        raw = bytearray(path.read_bytes())
        raw[2000:2100] = bytes(100)
        path.write_bytes(bytes(raw))
    elif kind == "single npy":
        with open(path, "wb") as handle:  # a file object: np.save would append ".npy"
            np.save(handle, np.ones(3))
    # kind == "missing": write nothing


@pytest.mark.parametrize("kind", ["not a zip", "truncated zip", "corrupt member",
                                  "single npy", "missing"])
def test_load_npz_rejects_unreadable_files(tmp_path, kind):
    path = tmp_path / "broken.npz"
    write_broken_npz(path, kind)
    with pytest.raises(DataError, match="broken.npz"):
        data.load_npz(path)
