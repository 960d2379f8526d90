"""An image folder: one subfolder per class (its name is the class; classes numbered in
sorted order), PNG or JPEG files in each, read through Pillow (`pip install 'cnncc[images]'`).

Images whose size differs from the first are refused, naming both files, unless `size=(H, W)`
is given: then every image is resized to it (bilinear). Refusing is the default because a
silent resize changes what the network sees.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
INSTALL_HINT = "pip install 'cnncc[images]' (or: pip install pillow)"


def _image_module():
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"reading an image folder needs Pillow, which is not installed: {INSTALL_HINT}") from None
    return Image


def load_image_folder(directory, *, channels: int | None = None, size=None, limit=None):
    """(x float32 N x C x H x W in [0, 1], y int64, class names). channels 1 (grey) or 3
    (RGB); default: 1 if every image is greyscale, else 3."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected one subfolder per class of PNG/JPEG images)")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if size is not None and (len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size)):
        raise ValueError(f"size must be (height, width) of positive integers or None, got {size!r}")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(path, label) for label, name in enumerate(classes)
             for path in sorted((directory / name).iterdir()) if path.suffix.lower() in EXTENSIONS]
    if len(classes) < 2 or not files:
        raise DataError(f"{directory}: found {len(classes)} class folder(s) and {len(files)} image(s) "
                        f"(expected at least 2 subfolders, one per class, of {'/'.join(EXTENSIONS)} files)")
    files = files[:limit] if limit else files
    Image = _image_module()
    opened = []
    for path, _ in files:
        try:
            with Image.open(path) as image:
                image.load()
                opened.append(image.copy())
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot read as an image: {exc}") from None
    if channels is None:
        channels = 1 if all(image.mode in ("L", "1", "I;16", "I") for image in opened) else 3
    first_size = opened[0].size  # (width, height)
    x = np.empty((len(files), channels, *(size or first_size[::-1])), np.float32)
    for index, (image, (path, _)) in enumerate(zip(opened, files)):
        if size is None and image.size != first_size:
            raise DataError(f"{path} is {image.size[0]}x{image.size[1]} (width x height) but {files[0][0]} is "
                            f"{first_size[0]}x{first_size[1]}; images of one folder must share a size, or pass "
                            f"size=(height, width) (--resize H W) to resize them all")
        image = image.convert("L" if channels == 1 else "RGB")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        pixels = np.asarray(image, np.float32) / 255.0
        x[index] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    y = np.array([label for _, label in files], np.int64)
    return x, y, classes
