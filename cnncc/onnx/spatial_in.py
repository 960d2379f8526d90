"""The handlers of the ONNX ops on images and signals: Conv, ConvTranspose, the pools (windowed,
global, and ReduceMean/ReduceMax over the spatial axes), Resize, and Pad (kept until the Conv or
pool after it absorbs it). Their attributes are read by windows.py and resize.py; layers_in.py
registers them with the other handlers.
"""
from __future__ import annotations

import numpy as np

from ..layers.formulas import transposed_output_size
from .fold import Const
from .graph import Padded
from .resize import scale_factors, upsample_fields, upsample_mode
from .windows import check_ceil_mode, explicit_pads, output_sizes, padding_field, window_fields


def _spatial_input(im, what):
    """(act, extra begins, extra ends, pad value) of a Conv's or pool's data input."""
    value = im.act(0, padded=True)
    act = value.act if isinstance(value, Padded) else value
    if act.flat or len(act.shape) not in (2, 3):
        im.fail(f"{what} needs a C x H x W image or a C x L signal, got a sample of shape {list(act.cnncc_shape)}")
    if isinstance(value, Padded):
        return act, value.begins, value.ends, value.value
    rank = len(act.shape) - 1
    return act, (0,) * rank, (0,) * rank, 0.0


def _window(im, attrs, act, kernel, extra_begins, extra_ends, dilations):
    spatial = act.shape[1:]
    strides = [int(s) for s in attrs.get("strides", [1] * len(spatial))]
    begins, ends = explicit_pads(attrs, spatial, kernel, strides, dilations)
    begins = [b + e for b, e in zip(begins, extra_begins)]
    ends = [b + e for b, e in zip(ends, extra_ends)]
    sizes = output_sizes(spatial, kernel, strides, dilations, begins, ends)
    return spatial, strides, begins, ends, sizes


def conv(im, attrs):
    act, extra_b, extra_e, fill = _spatial_input(im, "Conv")
    if fill != 0:
        im.fail(f"a Pad with value {fill} before it", "zero padding before a Conv")
    weight = im.weight(1, "weight")
    bias = im.weight(2, "bias", required=False)
    one_d = len(act.shape) == 2
    kernel = [int(k) for k in weight.shape[2:]]
    group = int(attrs.get("group", 1))
    if weight.ndim != len(act.shape) + 1 or weight.shape[1] * group != act.shape[0]:
        im.fail(f"weight of shape {list(weight.shape)} with group {group} does not fit an input of "
                f"{act.shape[0]} channels")
    if list(attrs.get("kernel_shape", kernel)) != kernel:
        im.fail(f"kernel_shape {attrs['kernel_shape']} differs from the weight's {kernel}")
    dilations = [int(d) for d in attrs.get("dilations", [1] * len(kernel))]
    spatial, strides, begins, ends, sizes = _window(im, attrs, act, kernel, extra_b, extra_e, dilations)
    filters = int(weight.shape[0])
    fields = {"filters": filters, **window_fields(one_d, kernel, strides, dilations),
              "padding": padding_field(spatial, kernel, strides, dilations, begins, ends)}
    if fields["padding"] == 0:
        del fields["padding"]
    if group != 1:
        fields["groups"] = group
    params = {"weight": weight}
    if bias is not None:
        params["bias"] = bias.reshape(-1)
    else:
        fields["bias"] = False
    im.output(im.add_layer("conv1d" if one_d else "conv2d", fields, [act], params, (filters, *sizes)))


def _image_input(im, what):
    act = im.act()
    if act.flat or len(act.shape) != 3:
        im.fail(f"{what} needs a C x H x W image, got a sample of shape {list(act.cnncc_shape)}")
    return act


def conv_transpose(im, attrs):
    act = _image_input(im, "ConvTranspose")
    weight = im.weight(1, "weight")
    bias = im.weight(2, "bias", required=False)
    group = int(attrs.get("group", 1))
    # ONNX's weight is (c_in, filters/group, kh, kw), as PyTorch's and cnncc's
    if weight.ndim != 4 or weight.shape[0] != act.shape[0] or act.shape[0] % group:
        im.fail(f"weight of shape {list(weight.shape)} with group {group} does not fit an input of "
                f"{act.shape[0]} channels")
    kernel = [int(k) for k in weight.shape[2:]]
    if list(attrs.get("kernel_shape", kernel)) != kernel:
        im.fail(f"kernel_shape {attrs['kernel_shape']} differs from the weight's {kernel}")
    if "output_shape" in attrs:
        im.fail("an output_shape attribute", "ConvTranspose with explicit pads and output_padding (PyTorch's export)")
    auto = attrs.get("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", "VALID"):
        im.fail(f"auto_pad {auto!r}", "ConvTranspose with explicit pads (auto_pad NOTSET or VALID)")
    strides = [int(s) for s in attrs.get("strides", [1, 1])]
    dilations = [int(d) for d in attrs.get("dilations", [1, 1])]
    extra = [int(p) for p in attrs.get("output_padding", [0, 0])]
    begins, ends = explicit_pads(attrs, act.shape[1:], kernel, strides, dilations)
    if begins != ends:
        im.fail(f"pads {begins + ends}, different at the two ends of an axis",
                "ConvTranspose with the same pads at both ends of each axis (cnncc crops each side alike)")
    sizes = [transposed_output_size(n, k, s, p, d, e)
             for n, k, s, p, d, e in zip(act.shape[1:], kernel, strides, begins, dilations, extra)]
    if min(sizes) < 1:
        im.fail(f"pads {begins + ends} crop the whole output (of size {sizes} before any is kept)")
    filters = int(weight.shape[1]) * group
    fields = {"filters": filters, **window_fields(False, kernel, strides, dilations)}
    for key, values in (("padding", begins), ("output_padding", extra)):
        if any(values):
            fields[key] = values[0] if values[0] == values[1] else list(values)
    if group != 1:
        fields["groups"] = group
    params = {"weight": weight}
    if bias is not None:
        params["bias"] = bias.reshape(-1)
    else:
        fields["bias"] = False
    im.output(im.add_layer("conv_transpose2d", fields, [act], params, (filters, *sizes)))


def resize(im, attrs):
    act = _image_input(im, "Resize")
    mode = upsample_mode(attrs)
    scales = im.const(2, "scales", required=False)
    scales = scales if scales is not None and scales.size else None  # exporters give an empty one with sizes
    sizes = None
    if scales is None:
        value = im.value(3)
        if not isinstance(value, Const):
            im.fail("neither its scales nor its sizes are constants", "Resize by constant scales or sizes")
        sizes = value.values
    factors = scale_factors(attrs, act.shape, im.batches, scales, sizes)
    channels, h, w = act.shape
    im.output(im.add_layer("upsample2d", upsample_fields(mode, factors), [act], {},
                           (channels, h * factors[0], w * factors[1])))


def pool(im, attrs, kind):
    act, extra_b, extra_e, fill = _spatial_input(im, im.node.op_type)
    if kind == "max" and extra_b + extra_e != (0,) * (2 * len(extra_b)) and fill > -3.4e38:
        im.fail(f"a Pad with value {fill} before a MaxPool (padding that could win the max)",
                "-inf padding before a MaxPool")
    if kind == "avg" and fill != 0:
        im.fail(f"a Pad with value {fill} before an AveragePool", "zero padding before an AveragePool")
    if any(d != 1 for d in attrs.get("dilations", [])):
        im.fail(f"dilations {attrs['dilations']}", "pools without dilation")
    kernel = [int(k) for k in attrs["kernel_shape"]]
    spatial = act.shape[1:]
    if len(kernel) != len(spatial):
        im.fail(f"kernel_shape {kernel} on a sample of shape {list(act.shape)}")
    own_b, own_e = explicit_pads(attrs, spatial, kernel, attrs.get("strides", [1] * len(kernel)), [1] * len(kernel))
    if kind == "avg" and not attrs.get("count_include_pad", 0) and any(own_b + own_e):
        im.fail("count_include_pad=0 with padding: a divisor that leaves the padding out",
                "AveragePool with count_include_pad=1 (divisor kh*kw, PyTorch's default) or without padding")
    spatial, strides, begins, ends, sizes = _window(im, attrs, act, kernel, extra_b, extra_e, [1] * len(kernel))
    check_ceil_mode(attrs, spatial, kernel, strides, begins, ends)
    im.unused_outputs(1, "the indices of the maxima")
    one_d = len(spatial) == 1
    fields = {**window_fields(one_d, kernel, strides, stride_default=kernel),
              "padding": padding_field(spatial, kernel, strides, [1] * len(kernel), begins, ends)}
    if fields["padding"] == 0:
        del fields["padding"]
    layer = f"{kind}pool{'1d' if one_d else '2d'}"
    im.output(im.add_layer(layer, fields, [act], {}, (act.shape[0], *sizes)))


def global_pool(im, attrs, kind):
    act = im.act()
    if act.flat or len(act.shape) < 2:
        im.fail("a global pool of a flat input")
    im.output(im.add_layer(kind, {}, [act], {}, (act.shape[0],) + (1,) * (len(act.shape) - 1), True))


def reduce(im, attrs, kind):
    """ReduceMean or ReduceMax over every spatial axis: a global pool."""
    act = im.act()
    axes = im.const(1, "axes", required=False) if im.opset >= 18 else attrs.get("axes")
    rank = len(act.shape) + 1
    axes = sorted(int(a) % rank for a in np.asarray(axes if axes is not None else []).reshape(-1))
    if act.flat or axes != list(range(2, rank)):
        im.fail(f"a reduction over axes {axes}", f"{im.node.op_type} over all the spatial axes (a global pool)")
    keep = attrs.get("keepdims", 1)
    shape = (act.shape[0],) + ((1,) * (rank - 2) if keep else ())
    im.output(im.add_layer(kind, {}, [act], {}, shape, bool(keep)))


def pad(im, attrs):
    act = im.act()
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        im.fail(f"mode {mode!r}", "constant padding")
    pads = [int(p) for p in im.const(1, "pads").reshape(-1)]
    fill = im.const(2, "constant_value", required=False)
    fill = float(fill.reshape(-1)[0]) if fill is not None and fill.size else 0.0
    rank = len(act.shape) + 1
    axes = im.const(3, "axes", required=False)
    axes = [int(a) % rank for a in axes.reshape(-1)] if axes is not None else list(range(rank))
    if len(pads) != 2 * len(axes) or min(pads, default=0) < 0:
        im.fail(f"pads {pads}", "non-negative pads, one begin and one end per axis")
    begins, ends = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begins[axis], ends[axis] = pads[i], pads[len(axes) + i]
    if act.flat or len(act.shape) not in (2, 3) or begins[:2] != [0, 0] or ends[:2] != [0, 0]:
        im.fail(f"padding {pads} of a sample of shape {list(act.shape)}", "Pad of the spatial axes of an image or signal")
    im.output(Padded(act, tuple(begins[2:]), tuple(ends[2:]), fill, im.node.name))
