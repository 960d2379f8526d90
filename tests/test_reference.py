"""Tests of the NumPy reference implementations (tests/reference.py) and of the
worked examples of the course notes (tests/seed_examples.py)."""

import itertools
import math
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference import (  # noqa: E402
    same_padding, output_size, pad2d,
    conv2d, conv2d_backward, conv1d, conv1d_backward,
    maxpool2d, maxpool2d_backward, avgpool2d, avgpool2d_backward,
    maxpool1d, maxpool1d_backward, avgpool1d, avgpool1d_backward,
    global_avgpool, global_avgpool_backward,
    dense, dense_backward,
    relu, relu_backward, leaky_relu, leaky_relu_backward,
    sigmoid, sigmoid_backward, tanh, tanh_backward, linear, linear_backward,
    softmax, softmax_backward,
    batchnorm_train, batchnorm_infer, batchnorm_train_backward,
    dropout, dropout_backward, add, add_backward, concat, concat_backward,
    softmax_cross_entropy, mse, binary_cross_entropy_with_logits,
    sgd_step, adam_step, numerical_gradient, directional_error,
)
import seed_examples as se  # noqa: E402


TOL = 1e-6


def rel_err(a, b):
    """max|a - b| / max(1e-8, max|a| + max|b|)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.max(np.abs(a - b)) / max(1e-8, np.max(np.abs(a)) + np.max(np.abs(b)))


def check_grad(analytic, f, x, h=1e-6):
    num = numerical_gradient(f, x, h)
    err = rel_err(analytic, num)
    assert err <= TOL, "relative error %g\nanalytic=\n%s\nnumeric=\n%s" % (err, analytic, num)


def away_from_zero(a, margin=1e-2):
    """Push values away from 0 so that kinks (relu, leaky relu) are avoided."""
    return np.where(a >= 0, a + margin, a - margin)


# ---------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------

def test_same_padding_and_output_size():
    assert same_padding(256, 7, 1, 1) == (3, 3)
    assert output_size(256, 7, 1, 3, 3, 1) == 256
    assert output_size(5, 3, 2, 0, 0, 1) == 2
    assert output_size(5, 3, 2, 1, 1, 1) == 3
    n = output_size(64, 3, 1, 0, 0, 1)
    assert n == 62
    n = output_size(n, 5, 2, 0, 0, 1)
    assert n == 29
    n = output_size(n, 7, 2, 0, 0, 1)
    assert n == 12
    # asymmetric cases: the odd remainder goes after (bottom / right)
    assert same_padding(6, 3, 2, 1) == (0, 1)   # out 3: (3-1)*2+3-6 = 1
    assert same_padding(5, 4, 1, 1) == (1, 2)   # total 3
    assert same_padding(7, 3, 1, 2) == (2, 2)   # dilated kernel spans 5
    assert same_padding(4, 1, 2, 1) == (0, 0)   # total would be negative
    for n_, k, s, d in itertools.product([5, 6, 7, 12], [1, 2, 3, 4], [1, 2, 3], [1, 2]):
        pb, pa = same_padding(n_, k, s, d)
        assert output_size(n_, k, s, pb, pa, d) == math.ceil(n_ / s)


# ---------------------------------------------------------------------------
# seed examples from the notes
# ---------------------------------------------------------------------------

def _check_output(ex, y):
    if ex["y"] is not None:
        if ex["atol"] == 0:
            np.testing.assert_array_equal(y, ex["y"])
        else:
            np.testing.assert_allclose(y, ex["y"], rtol=0, atol=ex["atol"])
    else:
        assert y.shape == ex["output_shape"]
    for idx, val in ex["y_entries"].items():
        assert y[idx] == val, (ex["name"], idx, y[idx], val)


@pytest.mark.parametrize("ex", se.CONV2D_EXAMPLES, ids=lambda e: e["name"])
def test_seed_conv2d(ex):
    y = conv2d(ex["x"], ex["w"], ex["b"], ex["stride"], ex["pad"], ex["dilation"], ex["groups"])
    _check_output(ex, y)


def test_seed_true_convolution_is_flipped_filter():
    w = se.CROSS_CORRELATION["w"]
    np.testing.assert_array_equal(se.TRUE_CONVOLUTION["w"][0, 0], np.flip(w[0, 0]))
    # true convolution written out directly: sum_{i,j} x[i,j] * k[2-i, 2-j]
    x = se.CROSS_CORRELATION["x"][0, 0]
    k = w[0, 0]
    assert sum(x[i, j] * k[2 - i, 2 - j] for i in range(3) for j in range(3)) == 26


@pytest.mark.parametrize("ex", se.CONV1D_EXAMPLES, ids=lambda e: e["name"])
def test_seed_conv1d(ex):
    y = conv1d(ex["x"], ex["w"], ex["b"], ex["stride"], ex["pad"], ex["dilation"], ex["groups"])
    _check_output(ex, y)


def test_seed_conv1d_input_is_unique_binary_solution():
    ex = se.FILTER_1D_NO_BIAS
    sols = []
    for bits in itertools.product([0.0, 1.0], repeat=8):
        x = np.array(bits).reshape(1, 1, 8)
        if np.array_equal(conv1d(x, ex["w"], None, 1, (1, 1)), ex["y"]):
            sols.append(bits)
    assert sols == [tuple(ex["x"].ravel())]


@pytest.mark.parametrize("ex", se.POOL_EXAMPLES, ids=lambda e: e["name"])
def test_seed_pool(ex):
    x = ex["x"]
    if ex["op"] == "relu_maxpool2d":
        x = relu(x)
        np.testing.assert_array_equal(x, ex["relu_out"])
    else:
        assert ex["op"] == "maxpool2d"
    y = maxpool2d(x, ex["kernel"], ex["stride"], ex["pad"])
    _check_output(ex, y)


def test_seed_softmax():
    ex = se.SOFTMAX_EXAMPLE
    y = softmax(ex["x"], axis=1)
    np.testing.assert_allclose(y, ex["y"], rtol=0, atol=1e-4)
    assert abs(y.sum() - 1) < 1e-12


def test_all_examples_listed():
    names = [e["name"] for e in se.ALL_EXAMPLES]
    assert len(names) == len(set(names)) == 14


# ---------------------------------------------------------------------------
# conv2d: independent im2col formulation + gradient checks
# ---------------------------------------------------------------------------

def conv2d_im2col(x, w, b, stride, pad, dilation, groups):
    """Independent formulation: gather shifted strided views into columns and
    do one matmul per group."""
    N, C, H, W = x.shape
    F, Cg, KH, KW = w.shape
    sh, sw = stride
    dh, dw = dilation
    t, bo, l, r = pad
    xp = np.zeros((N, C, H + t + bo, W + l + r))
    xp[:, :, t:t + H, l:l + W] = x
    OH = (H + t + bo - dh * (KH - 1) - 1) // sh + 1
    OW = (W + l + r - dw * (KW - 1) - 1) // sw + 1
    cols = np.zeros((N, C, KH, KW, OH, OW))
    for i in range(KH):
        for j in range(KW):
            cols[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * (OH - 1) + 1:sh,
                                  j * dw:j * dw + sw * (OW - 1) + 1:sw]
    Fg = F // groups
    y = np.zeros((N, F, OH, OW))
    for g in range(groups):
        c = cols[:, g * Cg:(g + 1) * Cg].reshape(N, Cg * KH * KW, OH * OW)
        wm = w[g * Fg:(g + 1) * Fg].reshape(Fg, Cg * KH * KW)
        y[:, g * Fg:(g + 1) * Fg] = np.einsum("fk,nkp->nfp", wm, c).reshape(N, Fg, OH, OW)
    if b is not None:
        y += b[None, :, None, None]
    return y


def test_conv2d_matches_im2col_random_settings():
    rng = np.random.default_rng(1234)
    for _ in range(40):
        groups = int(rng.choice([1, 1, 2, 3]))
        C = groups * int(rng.integers(1, 3))
        F = groups * int(rng.integers(1, 3))
        KH, KW = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        pad = tuple(int(p) for p in rng.integers(0, 3, size=4))
        H = int(rng.integers(dh * (KH - 1) + 1, 9))
        W = int(rng.integers(dw * (KW - 1) + 1, 9))
        N = int(rng.integers(1, 3))
        x = rng.standard_normal((N, C, H, W))
        w = rng.standard_normal((F, C // groups, KH, KW))
        b = rng.standard_normal(F) if rng.random() < 0.5 else None
        y = conv2d(x, w, b, (sh, sw), pad, (dh, dw), groups)
        y2 = conv2d_im2col(x, w, b, (sh, sw), pad, (dh, dw), groups)
        assert y.shape == y2.shape
        np.testing.assert_allclose(y, y2, rtol=1e-12, atol=1e-12)


# (x shape, w shape, stride, pad, dilation, groups, bias)
CONV_SETTINGS = {
    "basic_pad1": ((2, 3, 5, 5), (4, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    "stride2": ((2, 2, 6, 7), (3, 2, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, True),
    "same_asymmetric_s2": ((1, 2, 6, 6), (3, 2, 3, 3), (2, 2),
                           same_padding(6, 3, 2, 1) + same_padding(6, 3, 2, 1), (1, 1), 1, True),
    "same_asymmetric_k4": ((2, 2, 5, 5), (2, 2, 4, 2), (1, 1),
                           same_padding(5, 4, 1, 1) + same_padding(5, 2, 1, 1), (1, 1), 1, True),
    "dilation2": ((1, 2, 7, 7), (3, 2, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, True),
    "groups2": ((2, 4, 5, 5), (6, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True),
    "depthwise": ((2, 3, 5, 5), (3, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3, True),
    "no_bias": ((2, 2, 5, 4), (3, 2, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, False),
    "nonsquare_kernel": ((1, 2, 6, 7), (2, 2, 2, 4), (1, 2), (0, 1, 2, 0), (2, 1), 1, True),
}


@pytest.mark.parametrize("name", list(CONV_SETTINGS))
def test_conv2d_backward_numerical(name):
    xs, ws, stride, pad, dil, groups, has_bias = CONV_SETTINGS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if has_bias else None
    y = conv2d(x, w, b, stride, pad, dil, groups)
    R = rng.standard_normal(y.shape)

    def loss():
        return np.sum(conv2d(x, w, b, stride, pad, dil, groups) * R)

    dx, dw, db = conv2d_backward(R, x, w, has_bias, stride, pad, dil, groups)
    assert dx.shape == x.shape and dw.shape == w.shape
    check_grad(dx, loss, x)
    check_grad(dw, loss, w)
    if has_bias:
        check_grad(db, loss, b)
    else:
        assert db is None


@pytest.mark.parametrize("groups,has_bias", [(1, True), (2, False)])
def test_conv1d_backward_numerical(groups, has_bias):
    rng = np.random.default_rng(7 + groups)
    x = rng.standard_normal((2, 2, 9))
    w = rng.standard_normal((4, 2 // groups, 3))
    b = rng.standard_normal(4) if has_bias else None
    args = (2, (1, 2), 2, groups)  # stride, pad (left, right), dilation, groups
    y = conv1d(x, w, b, *args)
    assert y.shape == (2, 4, output_size(9, 3, 2, 1, 2, 2))
    # conv1d equals conv2d with H = 1
    y2 = conv2d(x[:, :, None, :], w[:, :, None, :], b, (1, 2), (0, 0, 1, 2), (1, 2), groups)
    np.testing.assert_array_equal(y, y2[:, :, 0, :])
    R = rng.standard_normal(y.shape)

    def loss():
        return np.sum(conv1d(x, w, b, *args) * R)

    dx, dw, db = conv1d_backward(R, x, w, has_bias, *args)
    check_grad(dx, loss, x)
    check_grad(dw, loss, w)
    if has_bias:
        check_grad(db, loss, b)
    else:
        assert db is None


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------

def distinct_values(rng, shape):
    """Random values with no ties (pairwise gaps >= 0.05 >> h)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.05 - n * 0.025 + rng.uniform(0, 0.01)).reshape(shape)


POOL_SETTINGS = {
    "k2s2": ((2, 2, 6, 6), (2, 2), (2, 2), (0, 0, 0, 0)),
    "k3s2_pad1_overlap": ((2, 2, 7, 6), (3, 3), (2, 2), (1, 1, 1, 1)),
    "k3s1_overlap": ((1, 2, 5, 5), (3, 3), (1, 1), (0, 0, 0, 0)),
    "k2x3_asym_pad": ((2, 1, 5, 6), (2, 3), (1, 2), (1, 0, 0, 1)),
}


@pytest.mark.parametrize("name", list(POOL_SETTINGS))
def test_maxpool_backward_numerical(name):
    xs, k, s, p = POOL_SETTINGS[name]
    rng = np.random.default_rng(11)
    x = distinct_values(rng, xs)
    y = maxpool2d(x, k, s, p)
    R = rng.standard_normal(y.shape)
    dx = maxpool2d_backward(R, x, k, s, p)
    check_grad(dx, lambda: np.sum(maxpool2d(x, k, s, p) * R), x)


@pytest.mark.parametrize("name", list(POOL_SETTINGS))
def test_avgpool_backward_numerical(name):
    xs, k, s, p = POOL_SETTINGS[name]
    rng = np.random.default_rng(12)
    x = rng.standard_normal(xs)
    y = avgpool2d(x, k, s, p)
    R = rng.standard_normal(y.shape)
    dx = avgpool2d_backward(R, x.shape, k, s, p)
    check_grad(dx, lambda: np.sum(avgpool2d(x, k, s, p) * R), x)


def test_pool1d_wrappers():
    rng = np.random.default_rng(13)
    x = distinct_values(rng, (2, 3, 9))
    y = maxpool1d(x, 3, 2, (1, 1))
    assert y.shape == (2, 3, 5)
    R = rng.standard_normal(y.shape)
    check_grad(maxpool1d_backward(R, x, 3, 2, (1, 1)),
               lambda: np.sum(maxpool1d(x, 3, 2, (1, 1)) * R), x)
    y = avgpool1d(x, 3, 2, (1, 0))
    assert y.shape == (2, 3, 4)
    R = rng.standard_normal(y.shape)
    check_grad(avgpool1d_backward(R, x.shape, 3, 2, (1, 0)),
               lambda: np.sum(avgpool1d(x, 3, 2, (1, 0)) * R), x)


def test_maxpool_padding_never_wins():
    x = -1.0 - np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)  # all negative
    y = maxpool2d(x, (3, 3), (2, 2), (1, 1, 1, 1))
    # window (0,0) holds x[0:2, 0:2] -> max -1; (0,1) x[0:2, 1:4] -> -2; ...
    np.testing.assert_array_equal(y, [[[[-1, -2], [-5, -6]]]])
    # a window containing only padding is an error
    with pytest.raises(AssertionError):
        maxpool2d(np.zeros((1, 1, 2, 2)), (2, 2), (2, 2), (2, 0, 0, 0))


def test_avgpool_padding_counts_as_zero():
    x = np.ones((1, 1, 2, 2))
    y = avgpool2d(x, (2, 2), (1, 1), (1, 1, 1, 1))
    np.testing.assert_array_equal(y, [[[[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]]])
    dx = avgpool2d_backward(np.ones_like(y), x.shape, (2, 2), (1, 1), (1, 1, 1, 1))
    np.testing.assert_array_equal(dx, np.ones((1, 1, 2, 2)))  # each real cell is in 4 windows


def test_maxpool_tie_goes_to_first_element():
    x = np.zeros((1, 1, 2, 2))
    dx = maxpool2d_backward(np.ones((1, 1, 1, 1)), x, (2, 2), (2, 2))
    np.testing.assert_array_equal(dx, [[[[1, 0], [0, 0]]]])
    # tie between (0,1) and (1,0): (0,1) comes first in row-major window order
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])
    dx = maxpool2d_backward(np.array([[[[5.0]]]]), x, (2, 2), (2, 2))
    np.testing.assert_array_equal(dx, [[[[0, 5], [0, 0]]]])
    # tie in a padded window: padding is -inf, first REAL maximum wins
    x = np.array([[[[2.0, 2.0], [2.0, 2.0]]]])
    dx = maxpool2d_backward(np.ones((1, 1, 2, 2)), x, (2, 2), (2, 2), (1, 1, 1, 1))
    np.testing.assert_array_equal(dx, np.ones((1, 1, 2, 2)))


def test_maxpool_overlapping_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 9.0
    dx = maxpool2d_backward(np.arange(1.0, 5.0).reshape(1, 1, 2, 2), x, (2, 2), (1, 1))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 1 + 2 + 3 + 4
    np.testing.assert_array_equal(dx, expected)


def test_global_avgpool():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 4, 5))
    y = global_avgpool(x)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)), rtol=1e-13)
    R = rng.standard_normal(y.shape)
    check_grad(global_avgpool_backward(R, x.shape), lambda: np.sum(global_avgpool(x) * R), x)


# ---------------------------------------------------------------------------
# dense, activations, softmax
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("has_bias", [True, False])
def test_dense(has_bias):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((3, 5))
    w = rng.standard_normal((4, 5))
    b = rng.standard_normal(4) if has_bias else None
    y = dense(x, w, b)
    np.testing.assert_allclose(y, x @ w.T + (b if has_bias else 0), rtol=1e-12, atol=1e-12)
    R = rng.standard_normal(y.shape)

    def loss():
        return np.sum(dense(x, w, b) * R)

    dx, dw, db = dense_backward(R, x, w, has_bias)
    check_grad(dx, loss, x)
    check_grad(dw, loss, w)
    if has_bias:
        check_grad(db, loss, b)
    else:
        assert db is None


ACTIVATIONS = {
    # name: (forward, backward(dy, x, y))
    "relu": (relu, lambda dy, x, y: relu_backward(dy, x)),
    "leaky_relu": (leaky_relu, lambda dy, x, y: leaky_relu_backward(dy, x)),
    "leaky_relu_0.2": (lambda x: leaky_relu(x, 0.2),
                       lambda dy, x, y: leaky_relu_backward(dy, x, 0.2)),
    "sigmoid": (sigmoid, lambda dy, x, y: sigmoid_backward(dy, y)),
    "tanh": (tanh, lambda dy, x, y: tanh_backward(dy, y)),
    "linear": (linear, lambda dy, x, y: linear_backward(dy)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward_numerical(name):
    fwd, bwd = ACTIVATIONS[name]
    rng = np.random.default_rng(16)
    x = away_from_zero(rng.uniform(-3, 3, size=(2, 3, 4, 4)))
    y = fwd(x)
    R = rng.standard_normal(y.shape)
    check_grad(bwd(R, x, y), lambda: np.sum(fwd(x) * R), x)


def test_activation_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_array_equal(relu(x), [0, 0, 0, 0.5, 2])
    np.testing.assert_array_equal(relu_backward(np.ones(5), x), [0, 0, 0, 1, 1])
    np.testing.assert_allclose(leaky_relu(x), [-0.02, -0.005, 0, 0.5, 2], rtol=1e-15)
    np.testing.assert_array_equal(leaky_relu_backward(np.ones(5), x), [0.01, 0.01, 0.01, 1, 1])
    np.testing.assert_allclose(sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-15)
    assert sigmoid(np.array([-1000.0]))[0] == 0.0 and sigmoid(np.array([1000.0]))[0] == 1.0
    np.testing.assert_array_equal(linear(x), x)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3, 3)])
def test_softmax_backward_numerical(shape):
    rng = np.random.default_rng(17)
    x = rng.standard_normal(shape) * 2
    y = softmax(x)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-13)
    # stability: a large shift does not change the result
    np.testing.assert_allclose(softmax(x + 1000.0), y, rtol=1e-12)
    if len(shape) == 4:  # per spatial position
        for h in range(shape[2]):
            for w in range(shape[3]):
                e = np.exp(x[:, :, h, w])
                np.testing.assert_allclose(y[:, :, h, w], e / e.sum(axis=1, keepdims=True),
                                           rtol=1e-13)
    R = rng.standard_normal(shape)
    check_grad(softmax_backward(R, y), lambda: np.sum(softmax(x) * R), x)


# ---------------------------------------------------------------------------
# batchnorm
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (5, 4)])
def test_batchnorm_train_backward_numerical(shape):
    rng = np.random.default_rng(18)
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    gamma = rng.uniform(0.5, 1.5, C)
    beta = rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    y, _, _ = batchnorm_train(x, gamma, beta, rm, rv)
    R = rng.standard_normal(shape)

    def loss():
        return np.sum(batchnorm_train(x, gamma, beta, rm, rv)[0] * R)

    dx, dgamma, dbeta = batchnorm_train_backward(R, x, gamma)
    check_grad(dx, loss, x)
    check_grad(dgamma, loss, gamma)
    check_grad(dbeta, loss, beta)
    # the output is normalised per channel
    axes = (0, 2, 3) if len(shape) == 4 else (0,)
    bshape = (1, C, 1, 1) if len(shape) == 4 else (1, C)
    xhat = (y - beta.reshape(bshape)) / gamma.reshape(bshape)
    np.testing.assert_allclose(xhat.mean(axis=axes), 0, atol=1e-12)


def test_batchnorm_running_stats_and_inference():
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(2, 1, 1, 2)  # M = 4
    gamma, beta = np.array([2.0]), np.array([0.5])
    rm0, rv0 = np.array([0.0]), np.array([1.0])
    y, rm, rv = batchnorm_train(x, gamma, beta, rm0, rv0, momentum=0.1, eps=1e-5)
    # mean 2.5, biased var 1.25, unbiased var 5/3
    np.testing.assert_allclose(y, 2.0 * (x - 2.5) / np.sqrt(1.25 + 1e-5) + 0.5, rtol=1e-14)
    np.testing.assert_allclose(rm, [0.9 * 0.0 + 0.1 * 2.5], rtol=1e-14)
    np.testing.assert_allclose(rv, [0.9 * 1.0 + 0.1 * 5.0 / 3.0], rtol=1e-14)
    assert rm0[0] == 0.0 and rv0[0] == 1.0  # inputs untouched
    yi = batchnorm_infer(x, gamma, beta, rm, rv, eps=1e-5)
    np.testing.assert_allclose(yi, 2.0 * (x - 0.25) / np.sqrt(0.9 + 0.5 / 3.0 + 1e-5) + 0.5,
                               rtol=1e-14)
    # 2-D input: per feature
    x2 = np.array([[1.0, 10.0], [3.0, 30.0]])
    y2, rm2, rv2 = batchnorm_train(x2, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2))
    np.testing.assert_allclose(rm2, [0.2, 2.0], rtol=1e-14)
    np.testing.assert_allclose(rv2, [0.9 + 0.1 * 2.0, 0.9 + 0.1 * 200.0], rtol=1e-14)
    np.testing.assert_allclose(y2, [[-1 / np.sqrt(1 + 1e-5), -10 / np.sqrt(100 + 1e-5)],
                                    [1 / np.sqrt(1 + 1e-5), 10 / np.sqrt(100 + 1e-5)]],
                               rtol=1e-14)


# ---------------------------------------------------------------------------
# dropout, add, concat
# ---------------------------------------------------------------------------

def test_dropout():
    rng = np.random.default_rng(19)
    x = rng.standard_normal((2, 3, 4, 4))
    mask = (rng.random(x.shape) > 0.3).astype(np.float64)
    y = dropout(x, 0.3, mask)
    np.testing.assert_allclose(y, np.where(mask == 1, x / 0.7, 0.0), rtol=1e-15)
    R = rng.standard_normal(x.shape)
    check_grad(dropout_backward(R, 0.3, mask), lambda: np.sum(dropout(x, 0.3, mask) * R), x)


def test_add():
    rng = np.random.default_rng(20)
    xs = [rng.standard_normal((2, 3, 4, 4)) for _ in range(3)]
    y = add(*xs)
    np.testing.assert_allclose(y, xs[0] + xs[1] + xs[2], rtol=1e-15)
    R = rng.standard_normal(y.shape)
    grads = add_backward(R, 3)
    assert len(grads) == 3
    for x, g in zip(xs, grads):
        check_grad(g, lambda: np.sum(add(*xs) * R), x)


def test_concat():
    rng = np.random.default_rng(21)
    xs = [rng.standard_normal((2, c, 3, 3)) for c in (2, 3, 1)]
    y = concat(xs)
    assert y.shape == (2, 6, 3, 3)
    np.testing.assert_array_equal(y[:, 2:5], xs[1])
    R = rng.standard_normal(y.shape)
    grads = concat_backward(R, [2, 3, 1])
    for x, g in zip(xs, grads):
        assert g.shape == x.shape
        check_grad(g, lambda: np.sum(concat(xs) * R), x)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------

def test_softmax_cross_entropy():
    rng = np.random.default_rng(22)
    z = rng.standard_normal((4, 5)) * 2
    labels = np.array([0, 3, 4, 3])
    loss, dz = softmax_cross_entropy(z, labels)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert abs(loss - np.mean(-np.log(p[np.arange(4), labels]))) < 1e-13
    check_grad(dz, lambda: softmax_cross_entropy(z, labels)[0], z)
    # stable for huge logits
    big, dbig = softmax_cross_entropy(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]))
    assert np.isfinite(big) and abs(big - 500.0) < 1e-9
    # row 1: (softmax [0, 1] - onehot [1, 0]) / N = [-0.5, 0.5]
    np.testing.assert_allclose(dbig, [[0, 0], [-0.5, 0.5]], atol=1e-15)


def test_mse():
    rng = np.random.default_rng(23)
    y = rng.standard_normal((2, 3, 2, 2))
    t = rng.standard_normal(y.shape)
    loss, dy = mse(y, t)
    assert abs(loss - np.mean((y - t) ** 2)) < 1e-13
    check_grad(dy, lambda: mse(y, t)[0], y)
    assert mse(np.array([1.0, 2.0]), np.array([0.0, 0.0]))[0] == 2.5


def test_binary_cross_entropy_with_logits():
    rng = np.random.default_rng(24)
    z = rng.standard_normal((3, 4)) * 3
    t = rng.random((3, 4))
    loss, dz = binary_cross_entropy_with_logits(z, t)
    s = 1 / (1 + np.exp(-z))
    naive = np.mean(-(t * np.log(s) + (1 - t) * np.log(1 - s)))
    assert abs(loss - naive) < 1e-12
    check_grad(dz, lambda: binary_cross_entropy_with_logits(z, t)[0], z)
    big, _ = binary_cross_entropy_with_logits(np.array([100.0, -100.0]), np.array([0.0, 1.0]))
    assert abs(big - 100.0) < 1e-9


# ---------------------------------------------------------------------------
# optimisers: hand-computed steps on w = [1, -2] with g1 = [0.5, 0.25],
# g2 = [-0.5, 1.0], lr = 0.1
# ---------------------------------------------------------------------------

W0 = np.array([1.0, -2.0])
G1 = np.array([0.5, 0.25])
G2 = np.array([-0.5, 1.0])


def test_sgd_plain():
    w1, v = sgd_step(W0, G1, 0.1)
    assert v is None
    np.testing.assert_allclose(w1, [0.95, -2.025], rtol=1e-14)
    w2, _ = sgd_step(w1, G2, 0.1)
    np.testing.assert_allclose(w2, [1.0, -2.125], rtol=1e-14)
    np.testing.assert_array_equal(W0, [1.0, -2.0])  # not modified


def test_sgd_momentum():
    w1, v1 = sgd_step(W0, G1, 0.1, momentum=0.9)
    np.testing.assert_allclose(v1, [0.5, 0.25], rtol=1e-14)           # v = g on step 1
    np.testing.assert_allclose(w1, [0.95, -2.025], rtol=1e-14)
    w2, v2 = sgd_step(w1, G2, 0.1, momentum=0.9, velocity=v1)
    np.testing.assert_allclose(v2, [-0.05, 1.225], rtol=1e-13)        # 0.9*v1 + g2
    np.testing.assert_allclose(w2, [0.955, -2.1475], rtol=1e-14)


def test_sgd_nesterov():
    w1, v1 = sgd_step(W0, G1, 0.1, momentum=0.9, nesterov=True)
    # g = g1 + 0.9*v1 = [0.95, 0.475]
    np.testing.assert_allclose(v1, [0.5, 0.25], rtol=1e-14)
    np.testing.assert_allclose(w1, [0.905, -2.0475], rtol=1e-14)
    w2, v2 = sgd_step(w1, G2, 0.1, momentum=0.9, nesterov=True, velocity=v1)
    # v2 = [-0.05, 1.225]; g = g2 + 0.9*v2 = [-0.545, 2.1025]
    np.testing.assert_allclose(v2, [-0.05, 1.225], rtol=1e-13)
    np.testing.assert_allclose(w2, [0.9595, -2.25775], rtol=1e-14)


def test_sgd_weight_decay():
    w1, _ = sgd_step(W0, G1, 0.1, weight_decay=0.1)
    # g = [0.5 + 0.1, 0.25 - 0.2] = [0.6, 0.05]
    np.testing.assert_allclose(w1, [0.94, -2.005], rtol=1e-14)
    w2, _ = sgd_step(w1, G2, 0.1, weight_decay=0.1)
    # g = [-0.5 + 0.094, 1.0 - 0.2005] = [-0.406, 0.7995]
    np.testing.assert_allclose(w2, [0.9806, -2.08495], rtol=1e-14)


def test_adam():
    eps = 1e-8
    m0 = v0 = np.zeros(2)
    w1, m1, v1 = adam_step(W0, G1, m0, v0, 1, 0.1)
    # m1 = 0.1*g1, v1 = 0.001*g1^2, mhat = g1, vhat = g1^2 -> step = lr * g/(|g| + eps)
    np.testing.assert_allclose(m1, [0.05, 0.025], rtol=1e-14)
    np.testing.assert_allclose(v1, [0.00025, 0.0000625], rtol=1e-13)
    np.testing.assert_allclose(w1, [1 - 0.1 * 0.5 / (0.5 + eps), -2 - 0.1 * 0.25 / (0.25 + eps)],
                               rtol=1e-14)
    w2, m2, v2 = adam_step(w1, G2, m1, v1, 2, 0.1)
    # m2 = 0.9*m1 + 0.1*g2 = [-0.005, 0.1225]
    # v2 = 0.999*v1 + 0.001*g2^2 = [0.00049975, 0.0010624375]
    # mhat = m2 / (1 - 0.81) ; vhat = v2 / (1 - 0.998001)
    np.testing.assert_allclose(m2, [-0.005, 0.1225], rtol=1e-12)
    np.testing.assert_allclose(v2, [0.00049975, 0.0010624375], rtol=1e-12)
    mhat = np.array([-0.005, 0.1225]) / 0.19
    vhat = np.array([0.00049975, 0.0010624375]) / 0.001999   # = [0.25, 0.53148...]
    np.testing.assert_allclose(w2, w1 - 0.1 * mhat / (np.sqrt(vhat) + eps), rtol=1e-12)
    np.testing.assert_allclose(w2, [0.9052631579, -2.1884376], rtol=1e-7)


def test_adam_weight_decay():
    w1, m1, v1 = adam_step(W0, G1, np.zeros(2), np.zeros(2), 1, 0.1, weight_decay=0.1)
    g = np.array([0.6, 0.05])  # g1 + 0.1*w0
    np.testing.assert_allclose(m1, 0.1 * g, rtol=1e-14)
    np.testing.assert_allclose(v1, 0.001 * g * g, rtol=1e-13)
    np.testing.assert_allclose(w1, W0 - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-14)


# ---------------------------------------------------------------------------
# the finite-difference helper itself
# ---------------------------------------------------------------------------

def test_numerical_gradient():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    x_before = x.copy()
    g = numerical_gradient(lambda: np.sum(x ** 3), x)
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, x_before)
    # at chosen flat indices only: those are computed, the rest stay 0
    some = numerical_gradient(lambda: np.sum(x ** 3), x, at=[1, 2])
    np.testing.assert_allclose(some.reshape(-1)[[1, 2]], (3 * x ** 2).reshape(-1)[[1, 2]], rtol=1e-8)
    assert some.reshape(-1)[0] == 0 and some.reshape(-1)[3] == 0
    np.testing.assert_array_equal(x, x_before)


def test_directional_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 50))
    x_before = x.copy()
    g = 3 * x ** 2
    errors = []
    for _ in range(4):
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v)
        errors.append(directional_error(lambda: np.sum(x ** 3), x, g, v))
        np.testing.assert_array_equal(x, x_before)
    assert max(errors) < 1e-8
    # one element of 2,000 wrong by a tenth of the largest: every direction sees it
    wrong = g.copy()
    wrong[7, 11] += 0.1 * np.abs(g).max()
    for _ in range(4):
        v = rng.standard_normal(x.shape)
        assert directional_error(lambda: np.sum(x ** 3), x, wrong, v / np.linalg.norm(v)) > 1e-6
    # a zero gradient where f does change along v is an error, not a division by zero
    assert directional_error(lambda: np.sum(x ** 3), x, np.zeros_like(x), v / np.linalg.norm(v)) == math.inf
    assert directional_error(lambda: 1.0, x, np.zeros_like(x), v) == 0.0


def test_pad2d():
    x = np.ones((1, 1, 2, 2))
    p = pad2d(x, (1, 0, 0, 2), value=-np.inf)
    assert p.shape == (1, 1, 3, 4)
    assert np.isinf(p[0, 0, 0]).all() and np.isinf(p[0, 0, :, 2:]).all()
    np.testing.assert_array_equal(p[0, 0, 1:, :2], 1)
