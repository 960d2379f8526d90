"""Specs that put the upsampling kinds through the interop (ONNX export and import, cnncc.torch)
in the variants the example specs leave out: conv_transpose2d with groups, per-axis stride,
padding, output_padding and dilation and no bias; upsample2d nearest and bilinear with unequal
factors; global_maxpool of an image and of a signal."""

UPSAMPLING = {
    "name": "upsampling_variants", "input": {"channels": 4, "height": 5, "width": 6},
    "layers": [
        {"name": "ct", "type": "conv_transpose2d", "filters": 6, "kernel": [3, 2], "stride": [2, 3],
         "padding": [1, 0], "output_padding": [1, 2], "dilation": [1, 2], "groups": 2, "bias": False,
         "activation": "tanh"},
        {"name": "near", "type": "upsample2d", "scale_factor": [2, 3]},
        {"name": "down", "type": "conv2d", "filters": 3, "kernel": 3, "stride": 2},
        {"name": "bilin", "type": "upsample2d", "scale_factor": [3, 2], "mode": "bilinear"},
        {"name": "ct2", "type": "conv_transpose2d", "filters": 4, "kernel": 2, "stride": 2},
        {"name": "gmp", "type": "global_maxpool"},
        {"name": "head", "type": "dense", "units": 3}],
    "loss": "softmax_cross_entropy",
}

SIGNAL_MAXPOOL = {
    "name": "signal_global_max", "input": {"channels": 2, "length": 12},
    "layers": [
        {"name": "conv", "type": "conv1d", "filters": 3, "kernel": 3, "activation": "relu"},
        {"name": "gmp", "type": "global_maxpool"},
        {"name": "head", "type": "dense", "units": 2}],
    "loss": "softmax_cross_entropy",
}

SPECS = {"upsampling": UPSAMPLING, "signal_maxpool": SIGNAL_MAXPOOL}
