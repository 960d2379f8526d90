"""`cnncc export` and `cnncc import`: the ONNX conversions from the command line.

`import` writes a readable spec (one layer a line, only the fields that differ from their
defaults) and the weights in cnncc's checkpoint format; both are written to temporary files first
and renamed into place only when both are complete, so a failure leaves no half-written output.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml


def export_command(args) -> int:
    from .. import compile as compile_spec
    from .exporter import export

    model = compile_spec(Path(args.spec), build_dir=args.build_dir)
    model.load(args.weights)
    export(model, args.out, opset=args.opset)
    print(f"wrote {args.out} (ONNX opset {args.opset}, {len(model.params)} tensors)")
    return 0


def spec_yaml(spec: dict, source: str) -> str:
    """The spec as YAML: the top level in block style, each layer one flow-style line; a layer's
    `inputs` only where it reads something other than the layer before it."""
    def flow(value):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 16).strip()

    lines = [f"# Imported from {Path(source).name} by `cnncc import`: inference only. Add a loss, an",
             "# optimizer and training settings to train it; Dropout and Identity nodes were removed.",
             f"name: {spec['name']}", f"input: {flow(spec['input'])}", f"dtype: {spec['dtype']}", "layers:"]
    previous = "input"
    for layer in spec["layers"]:
        layer = dict(layer)
        if layer["inputs"] == [previous]:
            del layer["inputs"]
        previous = layer["name"]
        lines.append(f"  - {flow(layer)}")
    return "\n".join(lines) + "\n"


def import_command(args) -> int:
    from ..checkpoint import params_writer
    from ..files import write_together
    from .importer import OnnxFileError, UnsupportedModel, translate, validate

    try:
        spec_dict, weights = translate(args.model)
        text = spec_yaml(spec_dict, args.model)
        spec = validate(text, weights, args.model)  # what the written file says, checked and fingerprinted
    except (UnsupportedModel, OnnxFileError) as exc:
        print(f"cnncc import: {exc}", file=sys.stderr)
        return 2
    out, weights_path = Path(args.out), Path(args.weights)
    write_together({weights_path: params_writer(weights_path, spec, weights),
                    out: lambda handle: handle.write(text.encode("utf-8"))})
    print(f"wrote {out} ({len(spec.layers)} layers) and {weights_path} ({len(weights)} tensors)")
    return 0
