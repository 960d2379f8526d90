"""Loaders for data on disk: binary CIFAR-10/100, image folders, memory-mapped .npy, the
--data dispatch. Every test writes its own small files."""
from __future__ import annotations

import numpy as np
import pytest

from cnncc.data import DataError
from cnncc.datasets import load_source
from cnncc.datasets.arrays import load_npy
from cnncc.datasets.cifar import load_cifar, read_cifar_file
from cnncc.datasets.images import load_image_folder
from tools import need_module


def _cifar_records(n, label_bytes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10 if label_bytes == 1 else 20, (n, label_bytes), dtype=np.uint8)
    if label_bytes == 2:
        labels[:, 1] = rng.integers(0, 100, n)
    pixels = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return labels, pixels, np.concatenate([labels, pixels.reshape(n, -1)], axis=1).tobytes()


def test_cifar10_binary(tmp_path):
    expected = []
    for k, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        labels, pixels, raw = _cifar_records(3, 1, k)
        (tmp_path / name).write_bytes(raw)
        expected.append((labels[:, 0], pixels))
    (x, y), (xt, yt) = load_cifar(tmp_path)
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.float32 and xt.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(y, np.concatenate([e[0] for e in expected[:5]]))
    # Record layout: the red plane, then green, then blue, each row-major: already C x H x W.
    np.testing.assert_array_equal(xt * 255, expected[5][1].astype(np.float32))
    assert load_cifar(tmp_path, limit=2)[0][0].shape[0] == 2


def test_cifar100_fine_and_coarse(tmp_path):
    labels, _, raw = _cifar_records(4, 2, 0)
    (tmp_path / "train.bin").write_bytes(raw)
    (tmp_path / "test.bin").write_bytes(raw)
    (_, fine), _ = load_cifar(tmp_path)
    (_, coarse), _ = load_cifar(tmp_path, label_mode="coarse")
    np.testing.assert_array_equal(fine, labels[:, 1])
    np.testing.assert_array_equal(coarse, labels[:, 0])


def test_cifar_errors_name_the_file(tmp_path):
    _, _, raw = _cifar_records(2, 1, 0)
    bad = tmp_path / "truncated.bin"
    bad.write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"truncated.bin: 6,141 bytes is not a whole number of CIFAR records of 3073"):
        read_cifar_file(bad, 1, 10)
    wrong = bytearray(raw)
    wrong[3073] = 12
    (tmp_path / "label.bin").write_bytes(bytes(wrong))
    with pytest.raises(DataError, match=r"label.bin: record 1 has label 12 \(expected 0..9\)"):
        read_cifar_file(tmp_path / "label.bin", 1, 10)
    pickled = tmp_path / "python"
    pickled.mkdir()
    (pickled / "data_batch_1").write_bytes(b"\x80\x04 a pickle")  # never opened
    with pytest.raises(DataError, match="pickle files.*never reads"):
        load_cifar(pickled)
    with pytest.raises(DataError, match="no binary CIFAR here"):
        load_cifar(tmp_path)


def _image_folder(tmp_path, sizes=((6, 5),), mode="RGB"):
    Image = need_module("PIL.Image", "pip install pillow")
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    written = {}
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for k, (w, h) in enumerate(sizes * 2):
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            path = root / name / f"{k}.png"
            Image.fromarray(pixels, mode).save(path)
            written[path] = pixels
    return root, written


def test_image_folder(tmp_path):
    root, written = _image_folder(tmp_path)
    x, y, names = load_image_folder(root)
    assert names == ["cat", "dog"] and y.tolist() == [0, 0, 1, 1]
    assert x.shape == (4, 3, 5, 6)  # N x C x H x W from width 6, height 5
    first = written[root / "cat" / "0.png"]
    np.testing.assert_allclose(x[0], first.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    grey, _, _ = load_image_folder(root, channels=1)
    assert grey.shape == (4, 1, 5, 6)


def test_image_folder_refuses_differing_sizes_unless_resizing(tmp_path):
    root, _ = _image_folder(tmp_path, sizes=((6, 5), (7, 5)))
    with pytest.raises(DataError, match=r"1.png is 7x5 \(width x height\) but .*0.png is 6x5.*size=\(height, width\)"):
        load_image_folder(root)
    x, _, _ = load_image_folder(root, size=(4, 4))
    assert x.shape == (8, 3, 4, 4)
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot read as an image"):
        load_image_folder(root, size=(4, 4))


def test_image_folder_through_load_source_splits_stratified(tmp_path):
    root, _ = _image_folder(tmp_path, sizes=((4, 4),) * 10, mode="L")
    notes = []
    (x, y), (xt, yt) = load_source(str(root), (1, 4, 4), 2, notes=notes)
    assert len(x) + len(xt) == 40 and sorted(yt.tolist()) == [0, 0, 1, 1]
    assert any("stratified by class" in note for note in notes)


def test_memory_mapped_npy(tmp_path):
    x = np.random.default_rng(0).random((10, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(10) % 3)
    mx, my = load_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    assert isinstance(mx, np.memmap) and not mx.flags.writeable
    np.testing.assert_array_equal(mx, x)
    assert my.dtype == np.int64
    np.save(tmp_path / "short.npy", np.arange(3))
    with pytest.raises(DataError, match="holds 10 samples but .*short.npy holds 3"):
        load_npy(tmp_path / "x.npy", tmp_path / "short.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects.npy: not a readable .npy"):
        load_npy(tmp_path / "objects.npy", tmp_path / "y.npy")
    with pytest.raises(DataError, match="missing.npy: file not found"):
        load_npy(tmp_path / "missing.npy", tmp_path / "y.npy")


def test_load_source_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_source(str(tmp_path / "nothing"), (1, 4, 4), 2)
    with pytest.raises(DataError, match="MNIST images are 1 x 28 x 28"):
        load_source("mnist", (3, 32, 32), 10)


def _idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_any_idx_pair(tmp_path):
    from cnncc.datasets.idx import load_idx_pair

    images = np.random.default_rng(0).integers(0, 256, (5, 6, 7))
    _idx(tmp_path / "images-idx3-ubyte", images)
    _idx(tmp_path / "labels-idx1-ubyte", np.arange(5))
    x, y = load_idx_pair(tmp_path / "images-idx3-ubyte", tmp_path / "labels-idx1-ubyte")
    assert x.shape == (5, 1, 6, 7) and x.dtype == np.float32 and y.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(x[:, 0] * 255, images, rtol=1e-6)
    _idx(tmp_path / "few-idx1-ubyte", np.arange(4))
    with pytest.raises(DataError, match="holds 5 images but .*few-idx1-ubyte holds 4 labels"):
        load_idx_pair(tmp_path / "images-idx3-ubyte", tmp_path / "few-idx1-ubyte")
