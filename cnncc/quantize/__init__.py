"""int8 post-training quantization: TFLite's integer scheme, compiled to C, bit-exact to a NumPy
integer reference.

    graph.py      CheckedNet -> QGraph (batchnorm folded, activations fused, refusals)
    layout.py     QGraph -> blob offsets and the liveness-planned int8 arena
    calibrate.py  float ranges of every tensor from calibration data
    scheme.py     ranges + float weights -> scales, zero points, int8/int32 values
    arith.py      TFLite's fixed-point arithmetic (NumPy)
    reference.py  the NumPy integer reference kernels
    render.py     C sources from templates/int8/ (ABI in abi.py)
    blobs.py      an op's arrays in the weights and words blobs
    model.py      QuantizedModel (predict, evaluate, report, save/load, export_onnx)
    onnx_export.py  QuantizedModel -> ONNX (QLinearConv, MatMulInteger, QDQ), for onnxruntime
"""
from .graph import QuantizeError, build_graph
from .layout import plan_layout
from .model import QuantizedModel, quantize

__all__ = ["QuantizeError", "QuantizedModel", "build_graph", "plan_layout", "quantize"]
