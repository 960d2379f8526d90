"""NumPy reference implementations (the test oracle) for cnncc.

Everything here is written to be *obviously correct* rather than fast:
plain loops over output positions, float64 everywhere, with only the
innermost window arithmetic vectorised (``np.sum`` over one window).

Conventions (same as PyTorch):

* Layout is N x C x H x W, row-major.  1-D signals are N x C x L and are
  handled by the 2-D functions with H = 1 (see ``conv1d`` / ``maxpool1d`` /
  ``avgpool1d``).
* Padding is explicit per side: ``(top, bottom, left, right)``.  An ``int``
  is accepted as shorthand for the same padding on all four sides.
* Kernel / stride / dilation are ``(h, w)`` pairs; an ``int`` means both.
* Convolution is cross-correlation (the kernel is not flipped).
* Every backward function returns gradients with the shapes of the
  corresponding forward inputs.
"""

import math

import numpy as np


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def _pair(v):
    """``int`` -> ``(v, v)``; a 2-sequence -> tuple of two ints."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(a) for a in v)
    assert len(v) == 2, "expected an int or a pair, got %r" % (v,)
    return v


def _pad4(p):
    """``int`` -> ``(p, p, p, p)``; a 4-sequence -> ``(top, bottom, left, right)``."""
    if isinstance(p, (int, np.integer)):
        return (int(p),) * 4
    p = tuple(int(a) for a in p)
    assert len(p) == 4, "padding must be (top, bottom, left, right), got %r" % (p,)
    assert min(p) >= 0, "negative padding is not supported: %r" % (p,)
    return p


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def same_padding(n, k, s=1, d=1):
    """'same' padding for one spatial dimension, TensorFlow/Keras style.

    out   = ceil(n / s)
    total = max((out - 1)*s + d*(k - 1) + 1 - n, 0)
    returns (before, after) = (total // 2, total - total // 2)
    i.e. an odd remainder goes to the bottom / right.
    """
    out = -(-n // s)  # ceil(n / s) for positive ints
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    before = total // 2
    return (before, total - before)


def output_size(n, k, s=1, p_before=0, p_after=0, d=1):
    """Output length of a window op along one dimension.

    out = floor((n + p_before + p_after - d*(k - 1) - 1) / s) + 1
    """
    return (n + p_before + p_after - d * (k - 1) - 1) // s + 1


def pad2d(x, pad, value=0.0):
    """Pad the two trailing (H, W) axes of x[N,C,H,W] with ``value``.

    pad = (top, bottom, left, right).
    """
    t, b, l, r = _pad4(pad)
    x = _f64(x)
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), mode="constant",
                  constant_values=value)


# ---------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------

def _conv_geometry(x_shape, w_shape, stride, pad, dilation, groups):
    N, C, H, W = x_shape
    F, Cg, KH, KW = w_shape
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    t, b, l, r = _pad4(pad)
    assert C % groups == 0 and F % groups == 0, "C and F must divide groups"
    assert Cg == C // groups, "w must be [F, C//groups, KH, KW]"
    OH = output_size(H, KH, sh, t, b, dh)
    OW = output_size(W, KW, sw, l, r, dw)
    assert OH > 0 and OW > 0, "empty output"
    return N, C, H, W, F, Cg, KH, KW, sh, sw, dh, dw, (t, b, l, r), OH, OW


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1),
           groups=1):
    """2-D cross-correlation with groups.

    x[N,C,H,W], w[F, C/G, KH, KW], b[F] or None  ->  y[N,F,OH,OW]

        y[n,f,oh,ow] = b[f] + sum_{c in group(f), kh, kw}
                       w[f, c - g0, kh, kw] * xpad[n, c, oh*sh + kh*dh, ow*sw + kw*dw]

    where group g = f // (F/G) covers input channels g0 = g*C/G .. (g+1)*C/G - 1,
    xpad is x zero-padded by pad = (top, bottom, left, right), and
    OH = output_size(H, KH, sh, top, bottom, dh) (likewise OW).
    """
    x = _f64(x)
    w = _f64(w)
    (N, C, H, W, F, Cg, KH, KW, sh, sw, dh, dw, p, OH, OW) = _conv_geometry(
        x.shape, w.shape, stride, pad, dilation, groups)
    Fg = F // groups
    xpad = pad2d(x, p)
    y = np.zeros((N, F, OH, OW))
    # The same sum taken tap by tap: tap (kh, kw) of every window is one strided view of xpad,
    # [N, C, OH, OW], and its weights w[:, :, kh, kw] a [F, C/G] matrix per group.
    for kh in range(KH):
        for kw in range(KW):
            tap = _tap_view(xpad, kh * dh, kw * dw, sh, sw, OH, OW)
            for g in range(groups):
                fs, cs = slice(g * Fg, (g + 1) * Fg), slice(g * Cg, (g + 1) * Cg)
                y[:, fs] += np.einsum("fc,nchw->nfhw", w[fs, :, kh, kw], tap[:, cs])
    if b is not None:
        y += _f64(b)[None, :, None, None]
    return y


def _tap_view(xpad, h0, w0, sh, sw, OH, OW):
    """xpad[n, c, h0 + oh*sh, w0 + ow*sw] for every n, c, oh < OH, ow < OW: one tap of every
    window (a view, so that adding into it adds into xpad)."""
    return xpad[:, :, h0:h0 + sh * (OH - 1) + 1:sh, w0:w0 + sw * (OW - 1) + 1:sw]


def conv2d_backward(dy, x, w, has_bias, stride=(1, 1), pad=(0, 0, 0, 0),
                    dilation=(1, 1), groups=1):
    """Gradients of ``conv2d``; returns (dx, dw, db or None).

    Written as the scatter-add transpose of the forward loop: for every
    output position (n, f, oh, ow) with its window xpad[n, group(f), ...]:

        dxpad[n, group(f), window] += dy[n,f,oh,ow] * w[f]
        dw[f]                      += dy[n,f,oh,ow] * xpad[n, group(f), window]
        db[f]                      += dy[n,f,oh,ow]

    dx is dxpad with the padding cropped off. The loops below take one tap
    (kh, kw) of every window at a time.  (Equivalently: dw is the
    cross-correlation of the input with dy, dx is the full convolution of
    dy with the flipped kernel, db = sum of dy over n, oh, ow.)
    """
    dy = _f64(dy)
    x = _f64(x)
    w = _f64(w)
    (N, C, H, W, F, Cg, KH, KW, sh, sw, dh, dw_, p, OH, OW) = _conv_geometry(
        x.shape, w.shape, stride, pad, dilation, groups)
    assert dy.shape == (N, F, OH, OW), "dy has shape %r, expected %r" % (
        dy.shape, (N, F, OH, OW))
    Fg = F // groups
    t, _, l, _ = p
    xpad = pad2d(x, p)
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(w)
    # tap by tap, as the forward: within one tap no two outputs share an input cell
    for kh in range(KH):
        for kw in range(KW):
            tap = _tap_view(xpad, kh * dh, kw * dw_, sh, sw, OH, OW)
            dtap = _tap_view(dxpad, kh * dh, kw * dw_, sh, sw, OH, OW)
            for g in range(groups):
                fs, cs = slice(g * Fg, (g + 1) * Fg), slice(g * Cg, (g + 1) * Cg)
                dtap[:, cs] += np.einsum("nfhw,fc->nchw", dy[:, fs], w[fs, :, kh, kw])
                dw[fs, :, kh, kw] += np.einsum("nfhw,nchw->fc", dy[:, fs], tap[:, cs])
    dx = dxpad[:, :, t:t + H, l:l + W].copy()
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


def _pad1d_to_2d(pad):
    """1-D padding int or (left, right) -> 2-D (0, 0, left, right)."""
    if isinstance(pad, (int, np.integer)):
        return (0, 0, int(pad), int(pad))
    l, r = (int(a) for a in pad)
    return (0, 0, l, r)


def conv1d(x, w, b=None, stride=1, pad=(0, 0), dilation=1, groups=1):
    """1-D cross-correlation: x[N,C,L], w[F,C/G,K] -> y[N,F,OL].

    y[n,f,o] = b[f] + sum_{c in group(f), k} w[f, c-g0, k] * xpad[n, c, o*s + k*d]
    pad = (left, right) or int.  Implemented as conv2d with H = 1.
    """
    x = _f64(x)
    w = _f64(w)
    y = conv2d(x[:, :, None, :], w[:, :, None, :], b, (1, int(stride)),
               _pad1d_to_2d(pad), (1, int(dilation)), groups)
    return y[:, :, 0, :]


def conv1d_backward(dy, x, w, has_bias, stride=1, pad=(0, 0), dilation=1,
                    groups=1):
    """Gradients of ``conv1d``; returns (dx[N,C,L], dw[F,C/G,K], db[F] or None)."""
    dy = _f64(dy)
    x = _f64(x)
    w = _f64(w)
    dx, dw, db = conv2d_backward(dy[:, :, None, :], x[:, :, None, :],
                                 w[:, :, None, :], has_bias, (1, int(stride)),
                                 _pad1d_to_2d(pad), (1, int(dilation)), groups)
    return dx[:, :, 0, :], dw[:, :, 0, :], db


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------

def _pool_geometry(x_shape, kernel, stride, pad):
    N, C, H, W = x_shape
    KH, KW = _pair(kernel)
    sh, sw = _pair(kernel if stride is None else stride)
    p = _pad4(pad)
    t, b, l, r = p
    OH = output_size(H, KH, sh, t, b, 1)
    OW = output_size(W, KW, sw, l, r, 1)
    assert OH > 0 and OW > 0, "empty output"
    return N, C, H, W, KH, KW, sh, sw, p, OH, OW


def _window_cells(oh, ow, KH, KW, sh, sw, t, l, H, W):
    """Real (unpadded) input cells of window (oh, ow), in row-major window
    order (kh outer, kw inner), as a list of (h, w) input coordinates."""
    cells = []
    for kh in range(KH):
        for kw in range(KW):
            h = oh * sh + kh - t
            w = ow * sw + kw - l
            if 0 <= h < H and 0 <= w < W:
                cells.append((h, w))
    return cells


def _maxpool_argmax(x, kernel, stride, pad):
    """Forward max pool plus, for every output, the (h, w) of the chosen input."""
    x = _f64(x)
    N, C, H, W, KH, KW, sh, sw, (t, b, l, r), OH, OW = _pool_geometry(
        x.shape, kernel, stride, pad)
    y = np.zeros((N, C, OH, OW))
    arg = np.zeros((N, C, OH, OW, 2), dtype=np.int64)
    for oh in range(OH):
        for ow in range(OW):
            cells = _window_cells(oh, ow, KH, KW, sh, sw, t, l, H, W)
            assert cells, "pooling window (%d, %d) contains only padding" % (oh, ow)
            for n in range(N):
                for c in range(C):
                    best_h, best_w = cells[0]
                    for (h, w) in cells[1:]:
                        if x[n, c, h, w] > x[n, c, best_h, best_w]:  # strict: first wins ties
                            best_h, best_w = h, w
                    y[n, c, oh, ow] = x[n, c, best_h, best_w]
                    arg[n, c, oh, ow] = (best_h, best_w)
    return y, arg


def maxpool2d(x, kernel, stride=None, pad=(0, 0, 0, 0)):
    """2-D max pooling: x[N,C,H,W] -> y[N,C,OH,OW].

    y[n,c,oh,ow] = max over real cells (h, w) of the window
                   h = oh*sh + kh - top, w = ow*sw + kw - left,
                   0 <= kh < KH, 0 <= kw < KW.
    Padded cells are -inf (never win); every window must contain at least
    one real cell (asserted).  stride=None means stride = kernel.
    """
    return _maxpool_argmax(x, kernel, stride, pad)[0]


def maxpool2d_backward(dy, x, kernel, stride=None, pad=(0, 0, 0, 0)):
    """Gradient of ``maxpool2d`` w.r.t. x.

    dx[n,c,h*,w*] += dy[n,c,oh,ow] where (h*, w*) is the argmax of window
    (oh, ow).  Ties go to ONE element: the first in row-major window order
    (kh outer, kw inner).  Overlapping windows accumulate.
    """
    dy = _f64(dy)
    x = _f64(x)
    _, arg = _maxpool_argmax(x, kernel, stride, pad)
    N, C, OH, OW = dy.shape
    assert arg.shape[:4] == dy.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    h, w = arg[n, c, oh, ow]
                    dx[n, c, h, w] += dy[n, c, oh, ow]
    return dx


def avgpool2d(x, kernel, stride=None, pad=(0, 0, 0, 0)):
    """2-D average pooling: x[N,C,H,W] -> y[N,C,OH,OW].

    y[n,c,oh,ow] = (1 / (KH*KW)) * sum_{kh,kw} xpad[n, c, oh*sh + kh, ow*sw + kw]
    Padded cells count as zeros; the divisor is always KH*KW
    (PyTorch count_include_pad=True).  stride=None means stride = kernel.
    """
    x = _f64(x)
    N, C, H, W, KH, KW, sh, sw, p, OH, OW = _pool_geometry(
        x.shape, kernel, stride, pad)
    xpad = pad2d(x, p)
    y = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * sh, ow * sw
            window = xpad[:, :, h0:h0 + KH, w0:w0 + KW]
            y[:, :, oh, ow] = np.sum(window, axis=(2, 3)) / (KH * KW)
    return y


def avgpool2d_backward(dy, x_shape, kernel, stride=None, pad=(0, 0, 0, 0)):
    """Gradient of ``avgpool2d`` w.r.t. x (only the shape of x is needed).

    dxpad[n, c, oh*sh + kh, ow*sw + kw] += dy[n,c,oh,ow] / (KH*KW) for every
    cell of the window; dx = dxpad with the padding cropped (so only real
    cells receive gradient).
    """
    dy = _f64(dy)
    x_shape = tuple(x_shape)
    N, C, H, W, KH, KW, sh, sw, p, OH, OW = _pool_geometry(
        x_shape, kernel, stride, pad)
    assert dy.shape == (N, C, OH, OW)
    t, b, l, r = p
    dxpad = np.zeros((N, C, H + t + b, W + l + r))
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * sh, ow * sw
            dxpad[:, :, h0:h0 + KH, w0:w0 + KW] += (
                dy[:, :, oh, ow][:, :, None, None] / (KH * KW))
    return dxpad[:, :, t:t + H, l:l + W].copy()


def maxpool1d(x, kernel, stride=None, pad=(0, 0)):
    """1-D max pooling of x[N,C,L] (maxpool2d with H = 1); pad = (left, right) or int."""
    x = _f64(x)
    y = maxpool2d(x[:, :, None, :], (1, int(kernel)),
                  (1, int(kernel if stride is None else stride)),
                  _pad1d_to_2d(pad))
    return y[:, :, 0, :]


def maxpool1d_backward(dy, x, kernel, stride=None, pad=(0, 0)):
    """Gradient of ``maxpool1d`` w.r.t. x[N,C,L] (first element wins ties)."""
    dy = _f64(dy)
    x = _f64(x)
    dx = maxpool2d_backward(dy[:, :, None, :], x[:, :, None, :], (1, int(kernel)),
                            (1, int(kernel if stride is None else stride)),
                            _pad1d_to_2d(pad))
    return dx[:, :, 0, :]


def avgpool1d(x, kernel, stride=None, pad=(0, 0)):
    """1-D average pooling of x[N,C,L] (avgpool2d with H = 1; divisor = kernel)."""
    x = _f64(x)
    y = avgpool2d(x[:, :, None, :], (1, int(kernel)),
                  (1, int(kernel if stride is None else stride)),
                  _pad1d_to_2d(pad))
    return y[:, :, 0, :]


def avgpool1d_backward(dy, x_shape, kernel, stride=None, pad=(0, 0)):
    """Gradient of ``avgpool1d`` w.r.t. x[N,C,L] (only its shape is needed)."""
    dy = _f64(dy)
    N, C, L = x_shape
    dx = avgpool2d_backward(dy[:, :, None, :], (N, C, 1, L), (1, int(kernel)),
                            (1, int(kernel if stride is None else stride)),
                            _pad1d_to_2d(pad))
    return dx[:, :, 0, :]


def global_avgpool(x):
    """Global average pooling: y[n,c] = (1/(H*W)) * sum_{h,w} x[n,c,h,w]."""
    x = _f64(x)
    N, C, H, W = x.shape
    y = np.zeros((N, C))
    for n in range(N):
        for c in range(C):
            y[n, c] = np.sum(x[n, c]) / (H * W)
    return y


def global_avgpool_backward(dy, x_shape):
    """Gradient of ``global_avgpool``: dx[n,c,h,w] = dy[n,c] / (H*W)."""
    dy = _f64(dy)
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            dx[n, c, :, :] = dy[n, c] / (H * W)
    return dx


def global_maxpool(x):
    """Global max pooling: y[n,c] = max_{h,w} x[n,c,h,w]."""
    x = _f64(x)
    N, C, H, W = x.shape
    return x.reshape(N, C, H * W).max(axis=2)


def global_maxpool_backward(dy, x):
    """Gradient of ``global_maxpool``: dx[n,c,h*,w*] = dy[n,c] at the FIRST maximum
    (row-major), as ``maxpool2d_backward`` takes a tie; zero elsewhere."""
    dy = _f64(dy)
    x = _f64(x)
    N, C, H, W = x.shape
    dx = np.zeros((N, C, H * W))
    first = x.reshape(N, C, H * W).argmax(axis=2)  # np.argmax returns the first occurrence
    for n in range(N):
        for c in range(C):
            dx[n, c, first[n, c]] = dy[n, c]
    return dx.reshape(N, C, H, W)


# ---------------------------------------------------------------------------
# transposed convolution
# ---------------------------------------------------------------------------

def conv_transpose_output_size(n, k, s=1, p=0, d=1, output_padding=0):
    """(n - 1)*s - 2p + d*(k - 1) + output_padding + 1 (PyTorch's ConvTranspose2d)."""
    return (n - 1) * s - 2 * p + d * (k - 1) + output_padding + 1


def _conv_transpose_geometry(x_shape, w_shape, stride, pad, output_padding, dilation, groups):
    N, C, H, W = x_shape
    Cw, Fg, KH, KW = w_shape
    assert Cw == C and C % groups == 0, "w must be [C, F//groups, KH, KW]"
    sh, sw = _pair(stride)
    ph, pw = _pair(pad)
    oph, opw = _pair(output_padding)
    dh, dw = _pair(dilation)
    # the full scatter, before the padding is cropped off each side
    FH = (H - 1) * sh + dh * (KH - 1) + 1 + oph
    FW = (W - 1) * sw + dw * (KW - 1) + 1 + opw
    OH, OW = FH - 2 * ph, FW - 2 * pw
    assert OH == conv_transpose_output_size(H, KH, sh, ph, dh, oph) and OH > 0 and OW > 0, "empty output"
    return N, C, H, W, Fg, KH, KW, sh, sw, ph, pw, dh, dw, FH, FW, OH, OW


def conv_transpose2d(x, w, b=None, stride=(1, 1), pad=(0, 0), output_padding=(0, 0),
                     dilation=(1, 1), groups=1):
    """2-D transposed convolution (PyTorch's ConvTranspose2d), as a scatter.

    x[N,C,H,W], w[C, F/G, KH, KW] (PyTorch's layout), b[F] or None -> y[N,F,OH,OW] with
    OH = (H - 1)*sh - 2*ph + dh*(KH - 1) + output_padding_h + 1 (likewise OW). Every input
    value adds its kernel onto the full result:

        yfull[n, g*F/G + f, ih*sh + kh*dh, iw*sw + kw*dw] += x[n, c, ih, iw] * w[c, f, kh, kw]

    for c in group g = c // (C/G); then y = yfull with ph rows (pw columns) cropped off each
    side, plus b. pad = (ph, pw) or int.
    """
    x = _f64(x)
    w = _f64(w)
    (N, C, H, W, Fg, KH, KW, sh, sw, ph, pw, dh, dw, FH, FW, OH, OW) = _conv_transpose_geometry(
        x.shape, w.shape, stride, pad, output_padding, dilation, groups)
    Cg = C // groups
    yfull = np.zeros((N, Fg * groups, FH, FW))
    for n in range(N):
        for c in range(C):
            f0 = (c // Cg) * Fg
            for ih in range(H):
                for iw in range(W):
                    h0, w0 = ih * sh, iw * sw
                    yfull[n, f0:f0 + Fg, h0:h0 + dh * (KH - 1) + 1:dh, w0:w0 + dw * (KW - 1) + 1:dw] += \
                        x[n, c, ih, iw] * w[c]
    y = yfull[:, :, ph:ph + OH, pw:pw + OW].copy()
    if b is not None:
        y += _f64(b)[None, :, None, None]
    return y


def conv_transpose2d_backward(dy, x, w, has_bias, stride=(1, 1), pad=(0, 0), output_padding=(0, 0),
                              dilation=(1, 1), groups=1):
    """Gradients of ``conv_transpose2d``; returns (dx, dw, db or None).

    The transpose of the forward's scatter: with dyfull = dy zero-padded by (ph, pw) on each
    side back to the full result's size, and win = the kernel's window of dyfull at (ih, iw),

        dx[n, c, ih, iw] = sum(w[c] * win[n, group(c)])
        dw[c]           += x[n, c, ih, iw] * win[n, group(c)]
        db[f]            = sum of dy over n, oh, ow
    """
    dy = _f64(dy)
    x = _f64(x)
    w = _f64(w)
    (N, C, H, W, Fg, KH, KW, sh, sw, ph, pw, dh, dw_, FH, FW, OH, OW) = _conv_transpose_geometry(
        x.shape, w.shape, stride, pad, output_padding, dilation, groups)
    assert dy.shape == (N, Fg * groups, OH, OW), "dy has shape %r" % (dy.shape,)
    Cg = C // groups
    dyfull = np.zeros((N, Fg * groups, FH, FW))
    dyfull[:, :, ph:ph + OH, pw:pw + OW] = dy
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for n in range(N):
        for c in range(C):
            f0 = (c // Cg) * Fg
            for ih in range(H):
                for iw in range(W):
                    h0, w0 = ih * sh, iw * sw
                    win = dyfull[n, f0:f0 + Fg, h0:h0 + dh * (KH - 1) + 1:dh, w0:w0 + dw_ * (KW - 1) + 1:dw_]
                    dx[n, c, ih, iw] = np.sum(w[c] * win)
                    dw[c] += x[n, c, ih, iw] * win
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


# ---------------------------------------------------------------------------
# upsampling
# ---------------------------------------------------------------------------

def bilinear_matrix(n, s):
    """The [n*s, n] matrix of 1-D linear interpolation by an integer factor s, as PyTorch's
    align_corners=False: output o reads x = max((o + 0.5)/s - 0.5, 0), i.e. inputs floor(x)
    and floor(x) + 1 (clamped to n - 1) with weights 1 - frac(x) and frac(x)."""
    A = np.zeros((n * s, n))
    for o in range(n * s):
        src = max((o + 0.5) / s - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n - 1)
        frac = src - i0
        A[o, i0] += 1.0 - frac
        A[o, i1] += frac
    return A


def upsample2d(x, scale, mode="nearest"):
    """Upsampling of x[N,C,H,W] by integer factors (sh, sw) -> y[N,C,H*sh,W*sw].

    nearest:  y[n,c,oh,ow] = x[n,c,oh // sh,ow // sw]
    bilinear: y[n,c] = Ah @ x[n,c] @ Aw^T with Ah = bilinear_matrix(H, sh), Aw likewise.
    """
    x = _f64(x)
    sh, sw = _pair(scale)
    if mode == "nearest":
        return x.repeat(sh, axis=2).repeat(sw, axis=3)
    assert mode == "bilinear", mode
    Ah, Aw = bilinear_matrix(x.shape[2], sh), bilinear_matrix(x.shape[3], sw)
    return np.einsum("ph,nchw,qw->ncpq", Ah, x, Aw)


def upsample2d_backward(dy, x_shape, scale, mode="nearest"):
    """Gradient of ``upsample2d`` w.r.t. x (only its shape is needed): the transpose maps.

    nearest:  dx[n,c,ih,iw] = sum of dy over the sh x sw block copied from (ih, iw)
    bilinear: dx[n,c] = Ah^T @ dy[n,c] @ Aw
    """
    dy = _f64(dy)
    N, C, H, W = x_shape
    sh, sw = _pair(scale)
    if mode == "nearest":
        return dy.reshape(N, C, H, sh, W, sw).sum(axis=(3, 5))
    assert mode == "bilinear", mode
    Ah, Aw = bilinear_matrix(H, sh), bilinear_matrix(W, sw)
    return np.einsum("ph,ncpq,qw->nchw", Ah, dy, Aw)


# ---------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------

def dense(x, w, b=None):
    """Fully connected layer: x[N,IN], w[UNITS,IN], b[UNITS] or None.

    y[n,u] = b[u] + sum_i x[n,i] * w[u,i]      (y = x @ w.T + b)
    """
    x = _f64(x)
    w = _f64(w)
    N, IN = x.shape
    U, IN2 = w.shape
    assert IN == IN2
    y = np.zeros((N, U))
    for n in range(N):
        for u in range(U):
            y[n, u] = np.sum(x[n, :] * w[u, :]) + (float(b[u]) if b is not None else 0.0)
    return y


def dense_backward(dy, x, w, has_bias):
    """Gradients of ``dense``; returns (dx, dw, db or None).

    dx[n,i] = sum_u dy[n,u] * w[u,i]      (dx = dy @ w)
    dw[u,i] = sum_n dy[n,u] * x[n,i]      (dw = dy.T @ x)
    db[u]   = sum_n dy[n,u]
    """
    dy = _f64(dy)
    x = _f64(x)
    w = _f64(w)
    N, IN = x.shape
    U = w.shape[0]
    assert dy.shape == (N, U)
    dx = np.zeros((N, IN))
    dw = np.zeros((U, IN))
    for n in range(N):
        for u in range(U):
            dx[n, :] += dy[n, u] * w[u, :]
            dw[u, :] += dy[n, u] * x[n, :]
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db


# ---------------------------------------------------------------------------
# activations (elementwise)
# ---------------------------------------------------------------------------

def relu(x):
    """y = max(x, 0)."""
    x = _f64(x)
    return np.where(x > 0, x, 0.0)


def relu_backward(dy, x):
    """Given the forward INPUT x: dx = dy * (x > 0)  (gradient 0 at x <= 0)."""
    return _f64(dy) * (_f64(x) > 0)


def leaky_relu(x, alpha=0.01):
    """y = x if x > 0 else alpha * x."""
    x = _f64(x)
    return np.where(x > 0, x, alpha * x)


def leaky_relu_backward(dy, x, alpha=0.01):
    """Given the forward INPUT x: dx = dy * (1 if x > 0 else alpha)."""
    return _f64(dy) * np.where(_f64(x) > 0, 1.0, alpha)


def sigmoid(x):
    """y = 1 / (1 + exp(-x)), evaluated stably for both signs of x."""
    x = _f64(x)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def sigmoid_backward(dy, y):
    """Given the forward OUTPUT y = sigmoid(x): dx = dy * y * (1 - y)."""
    y = _f64(y)
    return _f64(dy) * y * (1.0 - y)


def tanh(x):
    """y = tanh(x)."""
    return np.tanh(_f64(x))


def tanh_backward(dy, y):
    """Given the forward OUTPUT y = tanh(x): dx = dy * (1 - y^2)."""
    y = _f64(y)
    return _f64(dy) * (1.0 - y * y)


def linear(x):
    """Identity activation: y = x."""
    return _f64(x).copy()


def linear_backward(dy):
    """dx = dy."""
    return _f64(dy).copy()


def softmax(x, axis=1):
    """Numerically stable softmax along ``axis`` (default 1 = channels).

    y = exp(x - max(x)) / sum(exp(x - max(x)))  along axis.  For x[N,K] this is
    the usual per-row softmax; for x[N,C,H,W] it is per spatial position.
    """
    x = _f64(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_backward(dy, y, axis=1):
    """Given the forward OUTPUT y: dx = y * (dy - sum(dy * y, axis))."""
    dy = _f64(dy)
    y = _f64(y)
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


# ---------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------

def _bn_axes_and_shape(x):
    if x.ndim == 4:
        return (0, 2, 3), (1, -1, 1, 1)
    if x.ndim == 2:
        return (0,), (1, -1)
    raise ValueError("batchnorm expects x[N,C,H,W] or x[N,C], got ndim=%d" % x.ndim)


def batchnorm_train(x, gamma, beta, running_mean, running_var, momentum=0.1,
                    eps=1e-5):
    """Training-mode batch norm (PyTorch semantics), per channel c.

    With M = N*H*W (or N for x[N,C]) and the reduction over (n, h, w):
        mean[c] = (1/M) sum x
        var[c]  = (1/M) sum (x - mean)^2                     (biased)
        xhat    = (x - mean) / sqrt(var + eps)
        y       = gamma[c] * xhat + beta[c]
        new_running_mean = (1 - momentum)*running_mean + momentum*mean
        new_running_var  = (1 - momentum)*running_var  + momentum*var*M/(M-1)
    Returns (y, new_running_mean, new_running_var); inputs are not modified.
    """
    x = _f64(x)
    axes, bshape = _bn_axes_and_shape(x)
    C = x.shape[1]
    M = x.size // C
    mean = np.zeros(C)
    var = np.zeros(C)
    for c in range(C):
        xc = x[:, c]
        mean[c] = np.sum(xc) / M
        var[c] = np.sum((xc - mean[c]) ** 2) / M
    xhat = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + eps)
    y = _f64(gamma).reshape(bshape) * xhat + _f64(beta).reshape(bshape)
    var_unbiased = var * M / (M - 1) if M > 1 else var.copy()
    new_rm = (1 - momentum) * _f64(running_mean) + momentum * mean
    new_rv = (1 - momentum) * _f64(running_var) + momentum * var_unbiased
    return y, new_rm, new_rv


def batchnorm_infer(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Inference-mode batch norm, per channel c:

    y = gamma[c] * (x - running_mean[c]) / sqrt(running_var[c] + eps) + beta[c]
    """
    x = _f64(x)
    _, bshape = _bn_axes_and_shape(x)
    rm = _f64(running_mean).reshape(bshape)
    rv = _f64(running_var).reshape(bshape)
    return _f64(gamma).reshape(bshape) * (x - rm) / np.sqrt(rv + eps) + \
        _f64(beta).reshape(bshape)


def batchnorm_train_backward(dy, x, gamma, eps=1e-5):
    """Gradients of ``batchnorm_train``'s y through the batch statistics.

    Returns (dx, dgamma, dbeta).  Per channel, with M elements, the batch
    mean / biased var recomputed from x, istd = 1/sqrt(var + eps),
    xhat = (x - mean)*istd and dxhat = dy * gamma:
        dbeta  = sum dy
        dgamma = sum dy * xhat
        dx     = (istd / M) * (M*dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))
    (The running-stat update has no gradient.)
    """
    dy = _f64(dy)
    x = _f64(x)
    gamma = _f64(gamma)
    assert dy.shape == x.shape
    C = x.shape[1]
    M = x.size // C
    dx = np.zeros_like(x)
    dgamma = np.zeros(C)
    dbeta = np.zeros(C)
    for c in range(C):
        xc = x[:, c]
        dyc = dy[:, c]
        mean = np.sum(xc) / M
        var = np.sum((xc - mean) ** 2) / M
        istd = 1.0 / np.sqrt(var + eps)
        xhat = (xc - mean) * istd
        dbeta[c] = np.sum(dyc)
        dgamma[c] = np.sum(dyc * xhat)
        dxhat = dyc * gamma[c]
        dx[:, c] = (istd / M) * (M * dxhat - np.sum(dxhat) - xhat * np.sum(dxhat * xhat))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------------------
# dropout, add, concat
# ---------------------------------------------------------------------------

def dropout(x, rate, mask):
    """Inverted dropout: y = x * mask / (1 - rate), mask in {0, 1} (given by caller)."""
    assert 0 <= rate < 1
    mask = _f64(mask)
    assert np.all((mask == 0) | (mask == 1)), "mask must be 0/1"
    return _f64(x) * mask / (1.0 - rate)


def dropout_backward(dy, rate, mask):
    """dx = dy * mask / (1 - rate)."""
    return _f64(dy) * _f64(mask) / (1.0 - rate)


def add(*xs):
    """Elementwise sum y = x0 + x1 + ... (all the same shape)."""
    assert len(xs) >= 1
    y = _f64(xs[0]).copy()
    for x in xs[1:]:
        x = _f64(x)
        assert x.shape == y.shape
        y = y + x
    return y


def add_backward(dy, n_inputs):
    """Every input of ``add`` receives dy: returns a list of n_inputs copies."""
    return [_f64(dy).copy() for _ in range(n_inputs)]


def concat(xs, axis=1):
    """Concatenate along ``axis`` (default 1 = channels)."""
    return np.concatenate([_f64(x) for x in xs], axis=axis)


def concat_backward(dy, sizes, axis=1):
    """Split dy along ``axis`` into pieces of the given sizes (the inputs'
    extents along that axis); returns a list of arrays."""
    dy = _f64(dy)
    assert sum(sizes) == dy.shape[axis]
    out = []
    start = 0
    for s in sizes:
        idx = [slice(None)] * dy.ndim
        idx[axis] = slice(start, start + s)
        out.append(dy[tuple(idx)].copy())
        start += s
    return out


# ---------------------------------------------------------------------------
# losses: each returns (loss, d loss / d input)
# ---------------------------------------------------------------------------

def softmax_cross_entropy(logits, labels):
    """logits[N,K], labels int[N].

    loss = (1/N) sum_n [ logsumexp(logits[n]) - logits[n, labels[n]] ]
    dlogits = (softmax(logits) - onehot(labels)) / N
    (log-sum-exp computed stably by subtracting the row max.)
    """
    z = _f64(logits)
    labels = np.asarray(labels)
    N, K = z.shape
    assert labels.shape == (N,)
    loss = 0.0
    grad = np.zeros_like(z)
    for n in range(N):
        m = np.max(z[n])
        lse = m + np.log(np.sum(np.exp(z[n] - m)))
        loss += lse - z[n, labels[n]]
        p = np.exp(z[n] - lse)
        p[labels[n]] -= 1.0
        grad[n] = p / N
    return loss / N, grad


def mse(y, t):
    """loss = (1/numel) sum (y - t)^2 over ALL elements; dy = 2 (y - t) / numel."""
    y = _f64(y)
    t = _f64(t)
    assert y.shape == t.shape
    d = y - t
    return float(np.sum(d * d) / d.size), 2.0 * d / d.size


def binary_cross_entropy_with_logits(z, t):
    """BCE of sigmoid(z) against targets t in [0, 1], mean over ALL elements.

    per element: -[t log s + (1-t) log(1-s)], s = sigmoid(z), computed stably as
        max(z, 0) - z*t + log1p(exp(-|z|))
    dz = (sigmoid(z) - t) / numel
    """
    z = _f64(z)
    t = _f64(t)
    assert z.shape == t.shape
    per = np.maximum(z, 0.0) - z * t + np.log1p(np.exp(-np.abs(z)))
    return float(np.sum(per) / z.size), (sigmoid(z) - t) / z.size


# ---------------------------------------------------------------------------
# optimisers (PyTorch semantics); inputs are never modified
# ---------------------------------------------------------------------------

def sgd_step(w, g, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
             velocity=None):
    """One SGD step.  Returns (new_w, new_velocity); new_velocity is None
    when momentum == 0.

        g = g + weight_decay * w
        if momentum:
            v = g                     on the first step (velocity is None)
            v = momentum * v + g      afterwards
            g = g + momentum * v   if nesterov else   v
        w = w - lr * g
    """
    w = _f64(w).copy()
    g = _f64(g) + weight_decay * w
    v = None
    if momentum != 0:
        if velocity is None:
            v = g.copy()
        else:
            v = momentum * _f64(velocity) + g
        g = g + momentum * v if nesterov else v
    else:
        assert not nesterov, "nesterov requires momentum"
    return w - lr * g, v


def adam_step(w, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0):
    """One Adam step (t = 1 on the first step; the caller increments it).
    Returns (new_w, new_m, new_v).  m and v start as zeros.

        g    = g + weight_decay * w
        m    = beta1 * m + (1 - beta1) * g
        v    = beta2 * v + (1 - beta2) * g^2
        mhat = m / (1 - beta1^t)
        vhat = v / (1 - beta2^t)
        w    = w - lr * mhat / (sqrt(vhat) + eps)
    """
    assert t >= 1
    w = _f64(w).copy()
    g = _f64(g) + weight_decay * w
    m = beta1 * _f64(m) + (1 - beta1) * g
    v = beta2 * _f64(v) + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** t)
    vhat = v / (1 - beta2 ** t)
    return w - lr * mhat / (np.sqrt(vhat) + eps), m, v


# ---------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------

def rel_err(actual, expected) -> float:
    """The largest difference of two arrays of one shape, relative to the largest magnitude in
    either (0 for two zero or empty arrays): the tests' measure of agreement."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.size == 0:
        return 0.0
    scale = max(np.abs(actual).max(), np.abs(expected).max())
    return 0.0 if scale == 0 else float(np.abs(actual - expected).max() / scale)


def numerical_gradient(f, x, h=1e-6, at=None):
    """Central finite differences of the scalar function f() w.r.t. x.

    grad[i] = (f() with x[i] += h  -  f() with x[i] -= h) / (2h)
    x must be a float64 array that f() reads; it is modified in place during
    the evaluation and restored exactly afterwards. `at`: the flat indices to
    differentiate at (the others stay 0), where every element would cost too many
    evaluations of a large f.
    """
    assert isinstance(x, np.ndarray) and x.dtype == np.float64, \
        "x must be a float64 ndarray (modified in place)"
    grad = np.zeros_like(x)
    indices = np.ndindex(*x.shape) if at is None else (np.unravel_index(i, x.shape) for i in at)
    for idx in indices:
        old = x[idx]
        x[idx] = old + h
        fp = float(f())
        x[idx] = old - h
        fm = float(f())
        x[idx] = old
        grad[idx] = (fp - fm) / (2.0 * h)
    return grad


def directional_error(f, x, g, v, h=1e-6):
    """How far the gradient g of the scalar function f() w.r.t. x is from the central difference
    of f() along the direction v (x's shape), which g . v must equal:

        |(f() with x += h v  -  f() with x -= h v) / (2h)  -  g . v|  /  sum |g_i v_i|

    (the largest g . v can be, so the error is relative like the element-wise checks'). Two
    evaluations check every element of g at once, each weighted by its random v_i. x must be a
    float64 array that f() reads; it is restored exactly afterwards."""
    assert isinstance(x, np.ndarray) and x.dtype == np.float64, \
        "x must be a float64 ndarray (modified in place)"
    g, v = np.asarray(g, dtype=np.float64).reshape(x.shape), np.asarray(v, dtype=np.float64)
    assert v.shape == x.shape, (v.shape, x.shape)
    old = x.copy()
    x += h * v
    fp = float(f())
    x[...] = old
    x -= h * v
    fm = float(f())
    x[...] = old
    bound = float(np.abs(g).reshape(-1) @ np.abs(v).reshape(-1))
    along = (fp - fm) / (2.0 * h)
    if bound == 0:  # g is zero wherever v is not: f must not change along v either
        return 0.0 if along == 0 else math.inf
    return abs(along - float(g.reshape(-1) @ v.reshape(-1))) / bound
