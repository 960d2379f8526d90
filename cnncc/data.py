"""Datasets for training: MNIST (IDX files), a built-in synthetic set, and user .npz files.

Every loader returns ``((x_train, y_train), (x_test, y_test))`` with ``x`` as float32 of
shape ``(N, *sample_shape)`` and ``y`` as int64 class labels (or float32 regression
targets for user data). Any problem with a data file raises `DataError`, whose message
names the file, what is wrong and what was expected.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .files import FileWriteError, writable_target, write_bytes_atomically


class DataError(ValueError):
    """A missing, corrupt or malformed data file."""


# --------------------------------------------------------------------------- IDX files

def _read_file_bytes(path: Path) -> bytes:
    """The file's contents, decompressed if it is gzipped (by name or by magic bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if path.name.endswith(".gz") or raw.startswith(b"\x1f\x8b"):  # gzip magic bytes
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DataError(f"{path}: not a valid gzip file ({exc}); "
                            "the download is probably truncated or corrupt") from exc
    return raw


def _read_idx_with_magic(path) -> tuple[int, np.ndarray]:
    """Parse an IDX file; return its 32-bit magic number and its uint8 data array."""
    path = Path(path)
    raw = _read_file_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (expected a 4-byte magic starting with "
                        f"00 00, got {raw[:4].hex(' ') or 'an empty file'})")
    if raw[2] != 0x08:
        raise DataError(f"{path}: unsupported IDX data type 0x{raw[2]:02x} "
                        f"(expected 0x08, unsigned bytes)")
    ndim = raw[3]
    if ndim < 1:
        raise DataError(f"{path}: IDX header declares 0 dimensions (expected >= 1)")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path}: IDX header truncated (expected {header_len} header "
                        f"bytes for {ndim} dimensions, got {len(raw)})")
    sizes = struct.unpack(f">{ndim}i", raw[4:header_len])
    if any(size < 0 for size in sizes):
        raise DataError(f"{path}: negative dimension size in IDX header {sizes}")
    expected = math.prod(sizes)  # Python int: no overflow for absurd headers
    got = len(raw) - header_len
    if got != expected:
        problem = "truncated" if got < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX data {problem}: shape {sizes} needs {expected} "
                        f"data bytes, got {got}")
    magic = int.from_bytes(raw[:4], "big")
    # copy() so the caller gets an ordinary writable array, not a view of immutable bytes.
    array = np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(sizes).copy()
    return magic, array


def read_idx(path) -> np.ndarray:
    """Read one IDX file (raw or gzipped) of unsigned bytes into a uint8 array."""
    return _read_idx_with_magic(path)[1]


# --------------------------------------------------------------------------- MNIST

MNIST_FILES = {"train_images": "train-images-idx3-ubyte",
               "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
MNIST_ENV_VAR = "CNNCC_MNIST_DIR"
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
_GET_MNIST_HINT = (f"to get the data (needs internet) run: python -c \"import cnncc.data; "
                   f"cnncc.data.download_mnist('data/mnist')\", or set {MNIST_ENV_VAR} to a "
                   f"directory holding the files")


def _mnist_file(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists (raw preferred)."""
    return next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)


def _mnist_candidates(explicit=None) -> list[Path]:
    """Directories to search, in priority order. An explicit directory is the only one."""
    if explicit is not None:
        return [Path(explicit)]
    from_env = os.environ.get(MNIST_ENV_VAR)
    candidates = [Path(from_env)] if from_env else []
    repo_root = Path(__file__).resolve().parent.parent
    candidates += [Path("data/mnist"), Path("../shared/data/mnist"),
                   repo_root.parent / "shared" / "data" / "mnist"]
    return candidates


def find_mnist_dir(explicit=None) -> Path | None:
    """The first directory holding all four MNIST files, or None.

    Looks only in ``explicit`` if given; otherwise in $CNNCC_MNIST_DIR, ./data/mnist,
    ../shared/data/mnist and ../shared/data/mnist next to the repository root.
    """
    for directory in _mnist_candidates(explicit):
        if all(_mnist_file(directory, name) for name in MNIST_FILES.values()):
            return directory
    return None


def _read_mnist_idx(path: Path, expected_magic: int, kind: str) -> np.ndarray:
    # The magic encodes type and rank: 2051 = 0x0803 (bytes, 3-D), 2049 = 0x0801 (1-D).
    magic, array = _read_idx_with_magic(path)
    if magic != expected_magic:
        raise DataError(f"{path}: not an MNIST {kind} file (expected magic {expected_magic}, "
                        f"unsigned bytes with {expected_magic & 0xFF} dimension(s), got "
                        f"magic {magic} with {array.ndim})")
    return array


def _load_mnist_split(directory: Path, split: str, limit):
    images_path = _mnist_file(directory, MNIST_FILES[f"{split}_images"])
    labels_path = _mnist_file(directory, MNIST_FILES[f"{split}_labels"])
    images = _read_mnist_idx(images_path, _IMAGE_MAGIC, "image")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]} "
                        f"(expected 28x28)")
    labels = _read_mnist_idx(labels_path, _LABEL_MAGIC, "label")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels (expected equal counts)")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range "
                        f"(expected digits 0..9)")
    images, labels = images[:limit], labels[:limit]
    x = images.astype(np.float32).reshape(len(images), 1, 28, 28)
    x /= 255.0
    return x, labels.astype(np.int64)


def load_mnist(directory=None, *, limit=None):
    """Load MNIST as ``((x_train, y_train), (x_test, y_test))``.

    ``x`` is float32 of shape (N, 1, 28, 28) in [0, 1]; ``y`` is int64 of shape (N,).
    ``limit`` keeps only the first ``limit`` samples of each split (for quick runs).
    """
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    found = find_mnist_dir(directory)
    if found is None:
        looked = ", ".join(os.path.abspath(p) for p in _mnist_candidates(directory))
        raise DataError(f"MNIST data not found: looked in {looked} for the files "
                        f"{', '.join(MNIST_FILES.values())} (each may end in .gz); "
                        f"{_GET_MNIST_HINT}")
    return _load_mnist_split(found, "train", limit), _load_mnist_split(found, "test", limit)


def _md5(data: bytes) -> str:
    # usedforsecurity=False: MD5 is only an integrity check here; keeps FIPS systems happy.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _fetch_url(url: str, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except OSError as exc:  # URLError, HTTPError and socket timeouts are all OSErrors
        raise DataError(f"{url}: download failed: {exc}") from exc


def download_mnist(directory, *, base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
                   fetch=None) -> Path:
    """Download the four gzipped MNIST files into ``directory``, verifying their MD5.

    Files already present with the right MD5 are kept, others (re-)fetched. ``fetch(url)
    -> bytes`` replaces network access (for tests)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fetch = fetch or _fetch_url
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    for name, expected_md5 in MNIST_MD5.items():
        target = directory / name
        try:
            writable_target(target)  # before the download: a FIFO or device there is refused, not replaced
        except FileWriteError as exc:
            raise DataError(str(exc)) from None
        if target.is_file() and _md5(target.read_bytes()) == expected_md5:
            continue
        url = base_url + name
        data = fetch(url)
        got_md5 = _md5(data)
        if got_md5 != expected_md5:
            raise DataError(f"{name} downloaded from {url} is corrupt: expected MD5 "
                            f"{expected_md5}, got {got_md5}; nothing was written")
        write_bytes_atomically(target, data)
    return directory


# --------------------------------------------------------------------------- synthetic

# Independent random streams, so that e.g. changing n_train leaves the test set unchanged.
_PATTERN_STREAM, _TRAIN_STREAM, _TEST_STREAM = 0, 1, 2
_BLOBS_PER_CHANNEL = 4
_NOISE_STD = 0.1


def _class_pattern(seed: int, label: int, channels: int, canvas, margins) -> np.ndarray:
    """One class's smooth random pattern: a sum of axis-aligned Gaussian blobs.

    Drawn on a canvas ``margins`` larger than a sample on each side, so shifted crops never
    run off the edge. Seeded per class: it does not depend on the number of classes."""
    rng = np.random.default_rng([seed, _PATTERN_STREAM, label])
    grid = np.meshgrid(*[np.arange(size, dtype=np.float64) for size in canvas], indexing="ij")
    pattern = np.zeros((channels, *canvas))
    for channel in range(channels):
        for _ in range(_BLOBS_PER_CHANNEL):
            exponent = 0.0
            for axis, (size, margin) in enumerate(zip(canvas, margins)):
                inner = size - 2 * margin  # the sample's own extent along this axis
                centre = margin + rng.uniform(0.2, 0.8) * inner
                # Unequal widths per axis make elongated blobs (bars), not just dots.
                width = max(0.7, rng.uniform(0.05, 0.2) * inner)
                exponent = exponent + ((grid[axis] - centre) / width) ** 2
            pattern[channel] += rng.uniform(0.5, 1.0) * np.exp(-0.5 * exponent)
        pattern[channel] /= max(pattern[channel].max(), 1e-12)
    return pattern.astype(np.float32)


def _synthetic_split(patterns: np.ndarray, margins, spatial, n: int, rng) -> tuple:
    classes, channels = patterns.shape[:2]
    ndim = len(spatial)
    # Balanced labels (counts differ by at most one), in random order.
    labels = rng.permutation(np.arange(n) % classes)
    # Crop each sample from its class's canvas at a random offset: a random translation
    # by up to `margin` pixels per axis. Built as one fancy-indexing gather.
    index = [labels.reshape((n,) + (1,) * (1 + ndim)),
             np.arange(channels).reshape((1, channels) + (1,) * ndim)]
    for axis, (size, margin) in enumerate(zip(spatial, margins)):
        offsets = rng.integers(0, 2 * margin + 1, size=(n, 1))
        shape = [n, 1] + [1] * ndim
        shape[2 + axis] = size
        index.append((offsets + np.arange(size)).reshape(shape))
    x = patterns[tuple(index)]
    broadcast = (n,) + (1,) * (1 + ndim)
    contrast = rng.uniform(0.5, 1.0, size=broadcast).astype(np.float32)
    background = rng.uniform(0.0, 0.15, size=broadcast).astype(np.float32)
    x = background + contrast * x
    x += _NOISE_STD * rng.standard_normal(x.shape, dtype=np.float32)
    np.clip(x, 0.0, 1.0, out=x)
    return x, labels.astype(np.int64)


def synthetic(shape=(1, 28, 28), classes=10, n_train=6000, n_test=1000, seed=0):
    """A deterministic generated dataset in the format of `load_mnist`.

    ``shape`` is (C, H, W) for images or (C, L) for 1-D signals. Each class is a fixed
    smooth random pattern; each sample is its class pattern shifted by a few pixels,
    with random contrast and brightness plus Gaussian noise, clipped to [0, 1].
    """
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else shape
    if not (isinstance(shape, tuple) and len(shape) in (2, 3)
            and all(_is_int(s) and s >= 1 for s in shape)):
        raise ValueError(f"shape must be (C, H, W) or (C, L) of positive ints, got {shape!r}")
    for name, value, minimum in (("classes", classes, 2), ("n_train", n_train, 1),
                                 ("n_test", n_test, 1), ("seed", seed, 0)):
        if not _is_int(value) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    channels, spatial = int(shape[0]), tuple(int(s) for s in shape[1:])
    margins = tuple(min(3, size // 8) for size in spatial)  # max shift: a few pixels
    canvas = tuple(size + 2 * margin for size, margin in zip(spatial, margins))
    patterns = np.stack([_class_pattern(seed, k, channels, canvas, margins)
                         for k in range(classes)])
    train = _synthetic_split(patterns, margins, spatial, n_train,
                             np.random.default_rng([seed, _TRAIN_STREAM]))
    test = _synthetic_split(patterns, margins, spatial, n_test,
                            np.random.default_rng([seed, _TEST_STREAM]))
    return train, test


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- user .npz

def _npz_array(path: Path, archive, key: str) -> np.ndarray:
    try:
        array = archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read array '{key}': {exc}") from exc
    if array.dtype.kind not in "biuf" or array.ndim < 1:
        raise DataError(f"{path}: '{key}' is a {array.dtype} array of shape {array.shape} "
                        f"(expected a numeric array with one entry per sample)")
    return array


def _npz_split(path: Path, x: np.ndarray, y: np.ndarray, split: str):
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{path}: x_{split} has shape {x.shape} (expected (N, ...) with "
                        f"N >= 1 samples and at least one feature axis)")
    if len(x) != len(y):
        raise DataError(f"{path}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
    scaled = x.dtype == np.uint8
    x = x.astype(np.float32)
    if scaled:  # 8-bit pixels: scaled to [0, 1] like every other loader's images
        x /= 255.0
    if not np.isfinite(x).all():
        raise DataError(f"{path}: x_{split} contains NaN or infinite values")
    # Integer (or bool) targets are class labels; float targets are regression targets.
    y = y.astype(np.float32) if y.dtype.kind == "f" else y.astype(np.int64)
    return x, y, scaled


def load_npz(path, notes: list | None = None, seed: int = 0):
    """Load user data from an .npz with keys x_train, y_train and optionally x_test, y_test.

    x is N x C x H x W (or N x C x L); uint8 x is scaled to [0, 1] float32, other numbers are
    taken as they are. Integer y are class labels, float y regression targets. Without a test
    split, 10% of the training samples are held out: a seeded shuffle, stratified by class.
    What was done (scaling, the split) is appended to `notes` as sentences.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected an .npz archive)")
    # Checked first because np.load would treat a non-zip file as .npy or as a pickle,
    # and its error messages then talk about pickles instead of the real problem.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a valid .npz (zip) archive (a single .npy array, "
                        f"or a truncated/corrupt file?); save data with numpy.savez")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot load as .npz: {exc}") from exc
    with archive:
        keys = set(archive.files)
        missing = [k for k in ("x_train", "y_train") if k not in keys]
        if ("x_test" in keys) != ("y_test" in keys):
            missing.append("y_test" if "x_test" in keys else "x_test")
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)} (found "
                            f"{', '.join(sorted(keys)) or 'none'}; expected x_train, "
                            f"y_train and optionally both x_test, y_test)")
        arrays = {k: _npz_array(path, archive, k) for k in
                  ("x_train", "y_train", "x_test", "y_test") if k in keys}
    notes = [] if notes is None else notes
    x_train, y_train, scaled = _npz_split(path, arrays["x_train"], arrays["y_train"], "train")
    if scaled:
        notes.append(f"{path}: x_train is uint8: scaled to [0, 1] (divided by 255)")
    if "x_test" in arrays:
        x_test, y_test, _ = _npz_split(path, arrays["x_test"], arrays["y_test"], "test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(f"{path}: x_test samples have shape {x_test.shape[1:]} but "
                            f"x_train samples have {x_train.shape[1:]} (expected equal)")
    else:
        if len(x_train) < 2:
            raise DataError(f"{path}: only {len(x_train)} training sample(s) and no "
                            f"x_test/y_test (need at least 2 to split off a test set)")
        from .datasets.split import holdout_split

        train, test, how = holdout_split(y_train, 0.1, seed)
        notes.append(f"{path}: {how}")
        x_test, y_test = x_train[test], y_train[test]
        x_train, y_train = x_train[train], y_train[train]
    return (x_train, y_train), (x_test, y_test)
