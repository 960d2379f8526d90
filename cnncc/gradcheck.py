"""Gradients checked against central finite differences, in float64.

`cnncc gradcheck SPEC` recompiles a user's spec in double precision and compares the
backward pass with (L(w + h) - L(w - h)) / 2h on a sample of every parameter tensor, in
training mode with a fixed dropout seed. A correct network must pass, so three things that
are not errors of the backward pass are told apart from ones that are:

- scale: an entry's error is divided by the largest gradient of the whole tensor (not of the
  sampled entries), and errors below an absolute floor pass: a gradient that is exactly zero
  (a bias before batchnorm) leaves only rounding noise, which is not an error;
- kinks: where a step of h crosses a relu kink (or a maxpool switch), the difference quotient
  is not a derivative. Each entry is differenced with h and h/2; on a smooth stretch the two
  agree to O(h^2), across a kink they do not, and such entries are skipped and counted;
- a bias right before batchnorm is redundant (batchnorm subtracts the mean): a warning.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runtime import Model
from .spec import Spec, load_spec

ABSOLUTE_FLOOR = 1e-7  # |analytic - numeric| below this passes: float64 noise of a loss of order 1 over 2h
DEFAULT_TOLERANCE = 1e-6
# D(h) and D(h/2) further apart than tolerance / KINK_MARGIN of the tensor's scale mean a kink: on a
# smooth stretch they differ by O(h^2) (~1e-10 at h = 1e-5) plus rounding (~1e-11), while a kink at
# distance d < h moves them apart by (slope jump) x d / 2h.
KINK_MARGIN = 10


@dataclass(frozen=True)
class TensorCheck:
    error: float  # max |analytic - numeric| / the tensor's scale, over the entries kept
    checked: int
    skipped_kinks: int  # entries whose difference quotients disagree between h and h/2


def random_batch(model: Model, batch: int, rng: np.random.Generator):
    """Inputs and targets that fit the model's loss."""
    x = rng.normal(size=(batch,) + tuple(model.input_shape))
    loss = model.program.loss
    return x, loss.rules.random_targets(rng, batch, model.output_shape, loss.classes)


def relative_error(analytic: np.ndarray, numeric: np.ndarray, scale: float | None = None) -> float:
    """max |a - n| over the entries, scaled by the tensor's largest gradient (`scale`, else the
    largest of these entries); differences below ABSOLUTE_FLOOR count as zero."""
    if scale is None:
        scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0))
    difference = np.abs(analytic - numeric)
    difference[difference < ABSOLUTE_FLOOR] = 0.0
    return float(difference.max(initial=0.0) / max(scale, ABSOLUTE_FLOOR))


def _difference_quotient(model: Model, flat: np.ndarray, i: int, x, y, h: float, seed: int) -> float:
    saved = flat[i]
    flat[i] = saved + h
    up = model.loss(x, y, training=True, seed=seed)
    flat[i] = saved - h
    down = model.loss(x, y, training=True, seed=seed)
    flat[i] = saved
    return (up - down) / (2 * h)


def check_tensors(model: Model, x, y, samples: int = 30, h: float = 1e-6, seed: int = 0,
                  tolerance: float = DEFAULT_TOLERANCE) -> dict[str, TensorCheck]:
    """Every trainable tensor's check on up to `samples` entries (see the module docstring)."""
    rng = np.random.default_rng(seed)
    _, grads = model.gradients(x, y, seed=seed)
    frozen = model.flat_params[model.program.num_trainable:].copy()
    results = {}
    try:
        for key, analytic in grads.items():
            flat = model.params[key].reshape(-1)
            analytic = analytic.reshape(-1)
            scale = float(np.abs(analytic).max(initial=0.0))
            picks = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
            coarse = np.array([_difference_quotient(model, flat, i, x, y, h, seed) for i in picks])
            fine = np.array([_difference_quotient(model, flat, i, x, y, h / 2, seed) for i in picks])
            # (the floor term: an exactly-zero gradient leaves only rounding noise, which is no kink)
            reference = max(scale, np.abs(fine).max(initial=0.0))
            smooth = np.abs(coarse - fine) <= (tolerance * reference + ABSOLUTE_FLOOR) / KINK_MARGIN
            # Richardson: (4 D(h/2) - D(h)) / 3 cancels the h^2 term of the error
            numeric = (4 * fine - coarse) / 3
            error = relative_error(analytic[picks][smooth], numeric[smooth],
                                   max(scale, np.abs(numeric[smooth]).max(initial=0.0)))
            results[key] = TensorCheck(error, int(smooth.sum()), int((~smooth).sum()))
    finally:
        model.flat_params[model.program.num_trainable:] = frozen
    return results


def check_gradients(model: Model, x, y, samples: int = 30, h: float = 1e-6, seed: int = 0,
                    tolerance: float = DEFAULT_TOLERANCE) -> dict[str, float]:
    """Relative error of every trainable tensor's gradient (kinks skipped; see check_tensors)."""
    return {key: result.error for key, result in check_tensors(model, x, y, samples, h, seed, tolerance).items()}


def redundant_biases(spec: Spec) -> list[str]:
    """Layers whose bias feeds only a batchnorm, straight (no activation in between): batchnorm
    subtracts the batch mean, so that bias has no effect and its gradient is exactly zero."""
    consumers: dict[str, list] = {}
    for layer in spec.layers:
        for name in layer.inputs:
            consumers.setdefault(name, []).append(layer)
    found = []
    for layer in spec.layers:
        values = layer.layer.values()
        if values.get("bias") is True and layer.layer.activation_kind is None:
            after = consumers.get(layer.name, [])
            if after and all(other.layer.normalises_its_input for other in after):
                found.append(layer.name)
    return found


def gradcheck_command(args) -> int:
    spec = dataclasses.replace(load_spec(Path(args.spec)), dtype="float64")
    if spec.loss is None:
        raise ValueError(f"spec '{spec.name}' has no loss: there is no gradient to check")
    model = Model.compile(spec, build_dir=args.build_dir)
    model.init(args.seed)
    x, y = random_batch(model, args.batch, np.random.default_rng(args.seed))
    results = check_tensors(model, x, y, samples=args.samples, seed=args.seed, tolerance=args.tolerance)
    width = max(len(key) for key in results)
    print(f"{spec.name}: float64 backward vs central finite differences, batch {args.batch}, "
          f"up to {args.samples} entries per tensor, tolerance {args.tolerance:g} of each tensor's largest gradient")
    for name in redundant_biases(spec):
        print(f"  warning: layer '{name}' has a bias right before batchnorm, which cancels it (its gradient is 0): "
              "set `bias: false` there")
    failed = 0
    for key, result in results.items():
        ok = result.error <= args.tolerance
        failed += not ok
        kinks = f", {result.skipped_kinks} skipped at a kink" if result.skipped_kinks else ""
        print(f"  {key:<{width}}  relative error {result.error:.2e}  ({result.checked} entries{kinks})  "
              f"{'ok' if ok else 'FAIL'}")
    skipped = sum(r.skipped_kinks for r in results.values())
    print(f"{len(results) - failed} passed, {failed} failed" + (f"; {skipped} entries skipped at relu/max kinks"
                                                                 if skipped else ""))
    return 0 if failed == 0 else 1
