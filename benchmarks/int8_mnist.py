"""int8 vs float on real MNIST: train a spec once (1 epoch), quantize it with calibration drawn from
the training split only, and print test accuracy, top-1 agreement and batch-1 latency of both.

    python benchmarks/int8_mnist.py specs/mnist_seed.yaml specs/lenet5_mnist.yaml
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cnncc  # noqa: E402
from cnncc import data  # noqa: E402


def latency(fn, x, repeats=200):
    fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times))


def main(specs):
    (x, y), (xt, yt) = data.load_mnist(data.find_mnist_dir())
    for spec in specs:
        model = cnncc.compile(spec, build_dir="build").init(0)
        model.fit(x, y, epochs=1, verbose=0)
        calibration = x[np.random.default_rng(0).choice(len(x), 1000, replace=False)]
        q = model.quantize(calibration, build_dir="build")
        r = q.evaluate(xt, yt, float_model=model)
        one = xt[:1]
        x_q = q.quantize_input(one)
        print(f"{Path(spec).name}: float {100 * r['float_accuracy']:.2f}%  int8 {100 * r['accuracy']:.2f}%  "
              f"delta {100 * (r['accuracy'] - r['float_accuracy']):+.2f} points  agreement "
              f"{100 * r['agreement']:.2f}%  batch-1 latency float {latency(model.predict, one):.1f} us, int8 "
              f"{latency(q.predict_int8, x_q):.1f} us (int8 C only), {latency(q.predict, one):.1f} us (with "
              "quantize/dequantize in Python)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
