"""Gradients checked against central finite differences, in float64.

`cnncc gradcheck SPEC` recompiles a user's spec in double precision and compares the
backward pass with (L(w + h) - L(w - h)) / 2h on a sample of every parameter tensor and
of the input, in training mode with a fixed dropout seed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .runtime import Model
from .spec import load_spec


def random_batch(model: Model, batch: int, rng: np.random.Generator):
    """Inputs and targets that fit the model's loss."""
    x = rng.normal(size=(batch,) + tuple(model.input_shape))
    loss = model.program.loss
    return x, loss.rules.random_targets(rng, batch, model.output_shape, loss.classes)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| scaled by the tensor's largest gradient (robust where entries are ~0)."""
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), 1e-8)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def check_gradients(model: Model, x, y, samples: int = 30, h: float = 1e-6, seed: int = 0) -> dict[str, float]:
    """Relative error of every trainable tensor's gradient (on up to `samples` entries)."""
    rng = np.random.default_rng(seed)
    _, grads = model.gradients(x, y, seed=seed)
    frozen = model.flat_params[model.program.num_trainable:].copy()
    errors = {}
    try:
        for key, analytic in grads.items():
            flat = model.params[key].reshape(-1)
            picks = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
            numeric = np.empty(picks.size)
            for k, i in enumerate(picks):
                saved = flat[i]
                flat[i] = saved + h
                up = model.loss(x, y, training=True, seed=seed)
                flat[i] = saved - h
                down = model.loss(x, y, training=True, seed=seed)
                flat[i] = saved
                numeric[k] = (up - down) / (2 * h)
            errors[key] = relative_error(analytic.reshape(-1)[picks], numeric)
    finally:
        model.flat_params[model.program.num_trainable:] = frozen
    return errors


def gradcheck_command(args) -> int:
    spec = dataclasses.replace(load_spec(Path(args.spec)), dtype="float64")
    if spec.loss is None:
        raise ValueError(f"spec '{spec.name}' has no loss: there is no gradient to check")
    model = Model.compile(spec, build_dir=args.build_dir)
    model.init(args.seed)
    x, y = random_batch(model, args.batch, np.random.default_rng(args.seed))
    errors = check_gradients(model, x, y, samples=args.samples, seed=args.seed)
    width = max(len(key) for key in errors)
    print(f"{spec.name}: float64 backward vs central finite differences, batch {args.batch}, "
          f"up to {args.samples} entries per tensor, tolerance {args.tolerance:g}")
    failed = 0
    for key, error in errors.items():
        ok = error <= args.tolerance
        failed += not ok
        print(f"  {key:<{width}}  relative error {error:.2e}  {'ok' if ok else 'FAIL'}")
    print(f"{len(errors) - failed} passed, {failed} failed")
    return 0 if failed == 0 else 1
