"""The int8 commands: `cnncc quantize` and the int8 parts of `cnncc check` and `cnncc emit`."""
from __future__ import annotations

from pathlib import Path

from ..check import check_net
from ..spec import load_spec
from .graph import build_graph
from .layout import plan_layout


def int8_figures(spec) -> dict[str, int]:
    """The int8 weight (flash) and arena (RAM) bytes of a spec, from the graph alone."""
    layout = plan_layout(build_graph(check_net(load_spec(spec))))
    return {"int8_weight_bytes": layout.weight_bytes, "int8_arena_bytes": layout.arena_bytes,
            "int8_arena_bytes_unshared": layout.unshared_bytes}


def int8_figures_text(spec) -> str:
    f = int8_figures(spec)
    return (f"int8 (cnncc emit --int8, batch 1): weights {f['int8_weight_bytes']:,} bytes (flash), arena "
            f"{f['int8_arena_bytes']:,} bytes (RAM) against {f['int8_arena_bytes_unshared']:,} with one buffer "
            "per tensor")


def quantize_command(args) -> int:
    import cnncc

    from ..train_cli import load_data
    from .calibrate import calibration_array

    model = cnncc.compile(Path(args.spec), build_dir=args.build_dir)
    model.load(args.weights)
    if args.calibration in ("mnist", "synthetic"):  # the training split only: never the test data
        (x_cal, _), _ = load_data(model.spec, args.calibration, args.data_dir)
        x_cal = x_cal[:args.samples]
    else:
        x_cal = calibration_array(args.calibration, model.input_shape)[:args.samples]
    qmodel = model.quantize(x_cal, method=args.method, percentile=args.percentile, build_dir=args.build_dir)
    qmodel.save(args.out)
    print(qmodel.report().to_text())
    if args.data:
        _, (x_test, y_test) = load_data(model.spec, args.data, args.data_dir)
        result = qmodel.evaluate(x_test, y_test, float_model=model)
        print(f"test accuracy on {len(y_test):,} samples: float {100 * result['float_accuracy']:.2f}%, int8 "
              f"{100 * result['accuracy']:.2f}% ({100 * (result['accuracy'] - result['float_accuracy']):+.2f} "
              f"points); top-1 agreement {100 * result['agreement']:.2f}%")
    print(f"cnncc: wrote {args.out} (calibrated on {len(x_cal):,} samples, {args.method})")
    return 0


def add_quantize_parser(sub, positive, positive_float) -> None:
    p = sub.add_parser("quantize", help="post-training int8 quantization (TFLite's scheme) of trained weights",
                       description="Quantize a trained spec to int8: calibrate every tensor's range on DATA, "
                                   "fold batchnorm, write the quantized model (.npz) and print the per-layer "
                                   "report; with --data, float and int8 test accuracy and their top-1 agreement.")
    p.add_argument("spec")
    p.add_argument("--weights", required=True, metavar="W.npz", help="the trained float weights")
    p.add_argument("--calibration", required=True, metavar="DATA",
                   help="calibration inputs: an .npz with an x (or x_train) array, or mnist | synthetic "
                        "(their training split)")
    p.add_argument("-o", "--out", required=True, metavar="Q.npz", help="where to write the quantized model")
    p.add_argument("--method", choices=("minmax", "percentile"), default="minmax")
    p.add_argument("--percentile", type=positive_float, default=99.99, help="for --method percentile")
    p.add_argument("--samples", type=positive, default=1000, help="calibration samples used (default 1000)")
    p.add_argument("--data", default=None, help="evaluate on this test data: mnist | synthetic | FILE.npz")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--build-dir", default=None)
    p.set_defaults(run=quantize_command)
