"""Data against a network, before anything compiles or trains: the mistakes people make with
their own arrays (channels-last images, one-hot or (N, 1) labels), named with their fix.

`data_problem` only says what is wrong in a way that has a known fix; everything else is left
to the Model's own checks of shape, dtype, range and finiteness, which run before any C.
"""
from __future__ import annotations

import numpy as np


def _shape_text(shape) -> str:
    return " x ".join(map(str, shape))


def input_problem(input_shape, x_shape, what: str = "x") -> str | None:
    """A sentence with the fix when x's samples are the network input in the wrong layout."""
    expected = tuple(input_shape)
    got = tuple(x_shape[1:])
    if got == expected:
        return None
    if len(expected) == 3 and got == (expected[1], expected[2], expected[0]):
        return (f"{what} has samples of {_shape_text(got)}, which looks channels-last (N x H x W x C); the network "
                f"takes N x C x H x W = N x {_shape_text(expected)}: use x.transpose(0, 3, 1, 2)")
    if len(expected) == 3 and expected[0] == 1 and got == expected[1:]:
        return (f"{what} has samples of {_shape_text(got)} with no channel axis; the network takes "
                f"N x {_shape_text(expected)}: use x[:, None] (or x.reshape(-1, {_shape_text(expected).replace(' x ', ', ')}))")
    if len(expected) == 2 and got == expected[::-1]:
        return (f"{what} has samples of {_shape_text(got)}, which looks channels-last (N x L x C); the network "
                f"takes N x C x L = N x {_shape_text(expected)}: use x.transpose(0, 2, 1)")
    if len(got) == 1 and got[0] == int(np.prod(expected)):
        return (f"{what} has flat samples of {got[0]} values; the network takes N x {_shape_text(expected)} "
                f"(C x H x W): use x.reshape(-1, {', '.join(map(str, expected))})")
    return None


def label_problem(takes_labels: bool, classes: int | None, y, what: str = "y") -> str | None:
    """A sentence with the fix when class labels come as (N, 1) or one-hot rows."""
    if not takes_labels:
        return None
    y = np.asarray(y) if not isinstance(y, np.ndarray) else y
    if y.ndim == 2 and y.shape[1] == 1:
        return f"{what} has shape {tuple(y.shape)}; labels are one class index per sample, shape (N,): use y.ravel()"
    if y.ndim == 2 and classes is not None and y.shape[1] == classes:
        return (f"{what} has shape {tuple(y.shape)}, which looks one-hot; labels are one class index per sample, "
                f"shape (N,): use y.argmax(axis=1)")
    if y.ndim == 1 and y.dtype.kind == "f" and y.size and np.array_equal(y, np.round(y)):
        return f"{what} holds whole numbers stored as {y.dtype}; class labels must be integers: use y.astype(int)"
    return None


def data_problem(input_shape, loss, x, y, what: str = "") -> str | None:
    """The first fixable problem of (x, y) for a network, or None. `loss` is the Program's loss."""
    prefix = f"{what} " if what else ""
    problem = input_problem(input_shape, np.shape(x), f"{prefix}x")
    if problem is None and loss is not None:
        problem = label_problem(loss.takes_labels, loss.classes, y, f"{prefix}y")
    return problem
