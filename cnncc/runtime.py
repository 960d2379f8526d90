"""Model: the compiled network from Python, numpy in, numpy out.

The Model owns every buffer as a numpy array (parameters, gradients, optimizer state,
activations, workspace); `params["conv1.weight"]` is a view into the flat parameter
buffer, so assigning into it changes what the C code sees. The C has no error paths:
every call checks dtype, shape, batch size, finiteness and labels here, before any C runs.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .abi import Bindings
from .buffers import ParamViews, aligned_zeros, check_memory
from .build import build_program
from .options import MAX_THREADS, CompileOptions, checked_int
from .pipeline import Analysis, analyse
from .report import Report

ARENA_BYTES_PER_CHUNK = 256 << 20  # inference processes large inputs in chunks of this much activation
# The integers that cross into C, and the ranges Python checks before they do:
MAX_SEED = 2**64 - 1  # dropout seeds are uint64_t
MAX_BATCH = 2**31 - 1  # samples per C call (batch_size of forward)


class Model:
    def __init__(self, analysis: Analysis, module):
        """A built model; use Model.compile (or cnncc.compile)."""
        program = analysis.program
        self.analysis = analysis  # the checked net, the program and the report of this build
        self.spec = analysis.spec
        self.program = program
        self.module = module
        self.dtype = np.dtype(program.dtype)
        self._ffi = module.ffi
        self._c = Bindings(module.ffi, module.lib, program)
        self._name = program.name
        self._array_type = f"{program.c_type}[]"
        self._input_shape = tuple(program.input.shape)  # looked up on every call: kept as a tuple
        self._inference_chunk = max(1, ARENA_BYTES_PER_CHUNK // max(1, program.activation_size * self.dtype.itemsize))
        self._output_view_of: tuple[int, np.ndarray] | None = None  # (batch, the output's view into _acts)
        self._params = aligned_zeros(program.num_params, self.dtype)
        self._grads = aligned_zeros(program.num_trainable, self.dtype)  # frozen parameters have no gradient
        self._optimizer_state = aligned_zeros(program.optimizer_state_size, self.dtype)
        self._workspace = aligned_zeros(max(program.workspace_size, 1), self.dtype)
        self._acts = self._grad_acts = None
        self._capacity = 0
        self._context = self._c.new_context()
        # These buffers live as long as the model: their pointers are set once. The activation
        # buffers' are set whenever they grow (_ensure_capacity).
        ctx = self._context
        ctx.params, ctx.grads = self._ptr(self._params), self._ptr(self._grads)
        ctx.optimizer_state, ctx.workspace = self._ptr(self._optimizer_state), self._ptr(self._workspace)
        ctx.activations = ctx.grad_activations = self._ffi.NULL
        self.params = ParamViews({p.key: self._params[p.offset:p.offset + p.size].reshape(p.shape)
                                  for p in program.params})
        self._running_before = np.empty(program.num_params - program.num_trainable, self.dtype)
        self._loss_c = self._ffi.new("double *")
        self.hyper = {**program.optimizer_rules.defaults(), **program.optimizer.settings, "lr": program.optimizer.lr}
        self.step_count = 0
        self.loaded_epoch = None
        self.load_report = None  # what the last load(path, strict=False) copied and skipped
        self._hyper_c = None
        self.init(0)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def compile(cls, spec, build_dir=None, cflags=None, cc=None, threads: int = 1, backend: str = "vector",
                dtype: str | None = None, fuse: bool = True, options: CompileOptions | None = None) -> "Model":
        """spec: a path, YAML text, dict, Spec or an Analysis (pipeline.analyse, reused as it is).
        threads > 1: an OpenMP build running on that many threads (see set_threads), whose convs
        process that many samples at once. fuse=False keeps a relu after a batchnorm or an add as
        its own op, so `activation` can return that layer's output (the same numbers either way).
        `options` replaces the separate option arguments."""
        if isinstance(spec, Analysis):
            analysis = spec
        else:
            options = options or CompileOptions(threads=threads, cc=cc, cflags=cflags, backend=backend, dtype=dtype,
                                                fuse=fuse)
            analysis = analyse(spec, options)
        options = analysis.options
        module = build_program(analysis.program, analysis.spec.path, build_dir, options)
        model = cls(analysis, module)
        if options.threads > 1:
            model.set_threads(options.threads)
        return model

    def freeze(self, layers, build_dir=None) -> "Model":
        """The model recompiled with these layers frozen (`trainable: false`: no update, no gradient
        kept, no backward before the first trainable layer; their parameters stay as they are) and
        the others as they were. Returns the new model, carrying over the parameters and the step
        count; the optimizer state starts afresh (its layout follows the trainable parameters).
        This model is left unchanged."""
        return self._with_trainable(layers, False, build_dir)

    def unfreeze(self, layers, build_dir=None) -> "Model":
        """The model recompiled with these layers trainable again (see freeze)."""
        return self._with_trainable(layers, True, build_dir)

    def _with_trainable(self, layers, trainable: bool, build_dir) -> "Model":
        if isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
            raise ValueError(f"expected a list of layer names, got {layers!r}")
        known = [layer.name for layer in self.spec.layers]
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise ValueError(f"no layer named {', '.join(map(repr, unknown))}; the layers are {', '.join(known)}")
        chosen = set(layers)
        spec = replace(self.spec, layers=tuple(replace(layer, trainable=trainable) if layer.name in chosen else layer
                                               for layer in self.spec.layers))
        model = Model.compile(spec, build_dir=build_dir, options=self.analysis.options)
        for key, values in self.params.items():
            model.params[key][...] = values
        model.step_count = self.step_count
        model.hyper = dict(self.hyper)
        return model

    @property
    def report(self) -> Report:
        """The shape report of exactly this build (its threads' scratch included)."""
        return self.analysis.report

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.program.output.shape

    def init(self, seed: int = 0) -> "Model":
        """He init for ReLU-family layers, Glorot otherwise; biases 0; batchnorm gamma 1, running var 1."""
        rng = np.random.default_rng(checked_int("seed", seed, 0, MAX_SEED))
        for p in self.program.params:
            view = self.params[p.key]
            if p.init == "he":
                view[...] = rng.normal(0.0, math.sqrt(2.0 / p.fan_in), p.shape)
            elif p.init == "xavier":
                limit = math.sqrt(6.0 / (p.fan_in + p.fan_out))
                view[...] = rng.uniform(-limit, limit, p.shape)
            else:
                view[...] = 1.0 if p.init == "ones" else 0.0
        self._optimizer_state[...] = 0
        self.step_count = 0
        return self

    # ---- input checking ----------------------------------------------------------------
    def validated_inputs(self, x) -> np.ndarray:
        return self._checked_inputs(x)[0]

    def _checked_inputs(self, x):
        """(x as the model's contiguous dtype, its C pointer), or a ValueError: the pointer serves
        the finiteness check in C and then the forward call."""
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise ValueError(f"input must be a real numeric array, got dtype {x.dtype}")
        if x.shape[1:] != self._input_shape:  # a 0-d array too: its () is no input shape
            expected = ", ".join(map(str, ("N",) + self._input_shape))
            raise ValueError(f"input must have shape ({expected}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("input holds no samples (batch size 0)")
        if x.dtype != self.dtype:  # a value beyond the dtype's range becomes infinite, refused below
            with np.errstate(over="ignore"):
                x = np.ascontiguousarray(x, dtype=self.dtype)
        else:
            x = np.ascontiguousarray(x)
        pointer = self._ptr(x)
        if not self._c.all_finite(pointer, x.size):  # in C: a quarter of numpy's time at batch 1
            raise ValueError("input contains NaN or infinite values")
        return x, pointer

    def validated_targets(self, y, n: int) -> np.ndarray:
        loss = self.program.loss
        if loss is None:
            raise ValueError(f"spec '{self.spec.name}' has no loss: it compiles for inference only; "
                             "add e.g. `loss: softmax_cross_entropy` to train it")
        return loss.rules.validate_targets(np.asarray(y), n, self.output_shape, loss.classes, self.dtype)

    # ---- the C calls -------------------------------------------------------------------
    def _ptr(self, array: np.ndarray, ctype: str | None = None):
        """A C array over a contiguous array's data (passed as its pointer), valid while the array
        lives: from_buffer is three times faster than array.ctypes.data, which counts at batch 1."""
        return self._ffi.from_buffer(ctype or self._array_type, array)

    def _ensure_capacity(self, batch: int, training: bool) -> None:
        if batch > self._capacity or (training and self._grad_acts is None):
            check_memory(self.program, max(batch, self._capacity), training or self._grad_acts is not None)
            size = self.program.activation_size * max(batch, self._capacity)
            self._capacity = max(batch, self._capacity)
            self._acts = aligned_zeros(max(size, 1), self.dtype)
            self._output_view_of = None
            if training or self._grad_acts is not None:
                self._grad_acts = aligned_zeros(max(size, 1), self.dtype)
            self._context.activations = self._ptr(self._acts)
            if self._grad_acts is not None:
                self._context.grad_activations = self._ptr(self._grad_acts)

    def _output_view(self, batch: int) -> np.ndarray:
        """The output tensor of the last pass on `batch` samples, as a view into the activations
        (the last one made is kept: at batch 1 making it costs as much as copying it)."""
        if self._output_view_of is None or self._output_view_of[0] != batch:
            out = self.program.output
            if out.is_input:
                raise ValueError("the network has no operations")
            start = out.offset * batch
            self._output_view_of = (batch, self._acts[start:start + out.size * batch].reshape((batch,) + tuple(out.shape)))
        return self._output_view_of[1]

    def _forward(self, x: np.ndarray, training: bool, seed: int = 0, pointer=None) -> None:
        """pointer: x's, if the caller has it (_checked_inputs)."""
        batch = x.shape[0]
        # the range checks inline, as this runs on every call; checked_int only for its message
        if not 0 < batch <= MAX_BATCH:
            checked_int("the batch", batch, 1, MAX_BATCH)
        if type(seed) is not int or not 0 <= seed <= MAX_SEED:
            seed = checked_int("seed", seed, 0, MAX_SEED)
        self._ensure_capacity(batch, training)
        self._c.forward(self._context, self._ptr(x) if pointer is None else pointer, batch, int(training), seed)

    def _targets_ptr(self, y: np.ndarray):
        return self._ptr(y, "int32_t[]" if self.program.loss.takes_labels else None)

    def _checked_hyper(self) -> None:
        """self.hyper (which callers may edit) as the optimizer allows it, before anything changes."""
        errors = self.program.optimizer_rules.hyper_errors(self.hyper, self.dtype)
        if errors:
            raise ValueError("model.hyper: " + "; ".join(errors))

    def _hyper_struct(self):
        """NAME_hyper filled from self.hyper (the optimizer's fields, abi.hyper_fields, checked by
        _checked_hyper) and the step."""
        if self._hyper_c is None:
            self._hyper_c = self._c.new_hyper()
        h = self._hyper_c
        for key in self._c.hyper_names:
            if key != "step":
                value = self.hyper[key]
                setattr(h, key, int(bool(value)) if isinstance(value, bool) else float(value))
        h.step = self.step_count
        return h

    # ---- public API --------------------------------------------------------------------
    def forward(self, x, batch_size: int | None = None) -> np.ndarray:
        """The network's output for x [N, *input_shape] (inference mode), as a new array."""
        x, pointer = self._checked_inputs(x)
        if batch_size is not None:
            checked_int("batch_size", batch_size, 1, MAX_BATCH)
        chunk = batch_size or self._inference_chunk
        if x.shape[0] <= chunk:  # one call (batch 1 counts every microsecond)
            self._forward(x, training=False, pointer=pointer)
            return self._output_view(x.shape[0]).copy()
        outputs = []
        for start in range(0, x.shape[0], chunk):
            part = x[start:start + chunk]
            self._forward(part, training=False)
            outputs.append(self._output_view(part.shape[0]).copy())
        return np.concatenate(outputs)

    predict = forward

    def loss(self, x, y, training: bool = True, seed: int = 0, checked: bool = False) -> float:
        """The batch-mean loss (training mode: batch statistics and the seeded dropout mask).
        Training mode updates batchnorm's running statistics, as a training step would."""
        if not checked:
            x = self.validated_inputs(x)
            y = self.validated_targets(y, x.shape[0])
        self._forward(x, training, seed)
        return float(self._c.loss(self._context, self._targets_ptr(y), x.shape[0]))

    def gradients(self, x, y, seed: int = 0) -> tuple[float, dict[str, np.ndarray]]:
        """(batch-mean loss, gradients keyed like `params`), without changing the model."""
        x = self.validated_inputs(x)
        y = self.validated_targets(y, x.shape[0])
        frozen = self._params[self.program.num_trainable:].copy()  # running statistics
        try:
            loss = self.compute_gradients(x, y, seed, checked=True)
        finally:
            self._params[self.program.num_trainable:] = frozen
        grads = {p.key: self._grads[p.offset:p.offset + p.size].reshape(p.shape).copy()
                 for p in self.program.params if p.trainable}
        return loss, grads

    def train_step(self, x, y, seed: int | None = None, checked: bool = False) -> float:
        """One optimizer step on a batch; returns the loss before the step. `checked` means
        the caller already validated and converted x and y (fit does, once per dataset). A
        non-finite loss takes no step (its loss is returned); a finite loss whose update would be
        non-finite takes none either and raises TrainingError."""
        if not checked:
            x = self.validated_inputs(x)
            y = self.validated_targets(y, x.shape[0])
        batch = checked_int("the batch", x.shape[0], 1, MAX_BATCH)
        seed = checked_int("seed", self.step_count + 1 if seed is None else seed, 0, MAX_SEED)
        self._checked_hyper()
        self._ensure_capacity(batch, training=True)
        # The C step refuses a non-finite loss, running statistic or update and then changes no
        # trainable parameter or optimizer value; the running statistics its forward pass updated
        # are put back from this copy.
        running = self._params[self.program.num_trainable:]
        self._running_before[...] = running
        self.step_count += 1
        hyper = self._hyper_struct()
        updated = self._c.train_step(
            self._context, self._ptr(x), self._targets_ptr(y), batch, hyper, seed, self._loss_c)
        loss = float(self._loss_c[0])
        if not updated:
            running[...] = self._running_before
            self.step_count -= 1
            if math.isfinite(loss):
                self._refused_step(loss)
        return loss

    def _refused_step(self, loss: float | None) -> None:
        from .train import TrainingError

        before = "" if loss is None else f" (its loss before the update was {loss:.6g})"
        raise TrainingError(f"step {self.step_count + 1} would have made the weights or the optimizer state "
                            f"(or batchnorm's running statistics) NaN or infinite{before}; it was not taken, so the "
                            "weights are those before it. Try a lower learning rate or check the "
                            "optimizer's settings.")

    def state(self) -> dict[str, np.ndarray]:
        """Copies of everything training changes: the flat parameters (running statistics
        included), the optimizer state and the step count. restore() puts them back."""
        return {"params": self._params.copy(), "optimizer_state": self._optimizer_state.copy(),
                "step": np.array(self.step_count)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Put back what state() returned (for this model's program)."""
        params, optimizer_state = np.asarray(state["params"]), np.asarray(state["optimizer_state"])
        if params.shape != self._params.shape or optimizer_state.shape != self._optimizer_state.shape:
            raise ValueError("this state belongs to a different program (its buffer sizes differ)")
        self._params[...] = params
        self._optimizer_state[...] = optimizer_state
        self.step_count = int(state["step"])

    # ---- the low-level surface: flat buffers, single passes, a step in two halves (bench,
    # gradcheck, checkpoints and distributed training use these, never the private fields) ----
    @property
    def num_trainable(self) -> int:
        """How many of flat_params are trainable: they come first, the running statistics after."""
        return self.program.num_trainable

    @property
    def flat_params(self) -> np.ndarray:
        """Every parameter in one buffer (trainable ones first, then running statistics), at the
        offsets of program.params; writing into it changes what the C code sees."""
        return self._params

    @property
    def flat_grads(self) -> np.ndarray:
        """The gradient buffer (written by backward): the trainable parameters', laid out like the
        start of flat_params (program.num_trainable elements; frozen parameters have none)."""
        return self._grads

    @property
    def flat_optimizer_state(self) -> np.ndarray:
        """The optimizer's state (program.optimizer_state_size elements)."""
        return self._optimizer_state

    def flat_activations(self, batch: int, grad: bool = False) -> np.ndarray:
        """The activation buffer (or its gradient) of the most recent pass on `batch` samples:
        tensor t at [t.offset * batch, (t.offset + t.size) * batch)."""
        buffer = self._grad_acts if grad else self._acts
        if buffer is None or batch > self._capacity:
            raise ValueError(f"no stored {'gradients' if grad else 'activations'} for batch {batch}")
        return buffer[:self.program.activation_size * batch]

    def bind(self, x, y=None) -> "BoundBatch":
        """A fixed batch bound to the C passes (forward, loss, backward, step, single ops), checked
        and converted once here; y=None binds it for inference-mode forwards only."""
        from .passes import BoundBatch

        x = self.validated_inputs(x)
        y = None if y is None else self.validated_targets(y, x.shape[0])
        self._ensure_capacity(x.shape[0], training=y is not None)
        y_ptr = None if y is None else self._targets_ptr(y)
        return BoundBatch(self._c, self._context, x, y, self._ptr(x), y_ptr, self._hyper_struct)

    def compute_gradients(self, x, y, seed: int = 0, checked: bool = False) -> float:
        """Forward (training mode) + loss + zero_grad + backward: leaves the gradient of the batch-
        mean loss in flat_grads and returns that loss; no optimizer step, nothing copied. Like a
        training step it updates batchnorm's running statistics. The caller checks that the loss
        is finite before stepping. `checked`: x and y are already validated (see train_step)."""
        if not checked:
            x = self.validated_inputs(x)
            y = self.validated_targets(y, x.shape[0])
        n = x.shape[0]
        self._forward(x, True, seed)
        loss = float(self._c.loss(self._context, self._targets_ptr(y), n))
        self._c.zero_grad(self._context)
        self._c.backward(self._context, self._ptr(x), self._targets_ptr(y), n, seed)
        return loss

    def apply_step(self) -> None:
        """One optimizer update of the trainable parameters from flat_grads with `hyper`, counted
        in step_count (as train_step counts its steps). An update that would leave a weight or an
        optimizer value non-finite is not taken: TrainingError, nothing changed."""
        self._checked_hyper()
        self.step_count += 1
        if not self._c.step(self._context, self._hyper_struct()):
            self.step_count -= 1
            self._refused_step(None)

    def set_threads(self, threads: int) -> int:
        """Threads for this process's following calls: the count in effect, always 1 unless the
        model was compiled with threads > 1 (an OpenMP build; OMP_NUM_THREADS sets its starting
        count). Large matrix products split over them; results are identical at any count."""
        checked_int("threads", threads, 1, MAX_THREADS)
        return int(self._c.set_threads(threads))

    def last_output(self, batch: int) -> np.ndarray:
        """The output of the most recent forward pass (a view; valid until the next call)."""
        return self._output_view(batch)

    def activation(self, layer: str, batch: int, grad: bool = False) -> np.ndarray:
        """The output of `layer` from the most recent pass on `batch` samples, or with grad=True
        the loss gradient with respect to it from the most recent backward pass (a view; valid
        until the next call). For tests and debugging; the network input has no slot."""
        if layer in self.program.fused_away:
            after = self.program.fused_away[layer]
            kind = next((l.kind for l in self.spec.layers if l.name == after), "layer")
            raise ValueError(f"the output of '{layer}' is not stored: the {kind} '{after}' after it runs in the same "
                             f"kernels (read '{after}', or compile with fuse=False to keep every layer's output)")
        tensor = self.program.layer_outputs.get(layer)
        if tensor is None:
            raise ValueError(f"no layer named '{layer}'; layers: {', '.join(self.program.layer_outputs)}")
        if grad and tensor.name in self.program.unmaterialised_gradients:
            raise ValueError(f"the gradient of '{layer}' is not materialised: its conv's backward goes straight "
                             "through the maxpool after it (only each window's maximum has a gradient)")
        buffer = self._grad_acts if grad else self._acts
        if tensor.is_input or buffer is None or batch > self._capacity:
            raise ValueError(f"no stored {'gradient' if grad else 'output'} of '{layer}' for batch {batch}")
        start = tensor.offset * batch
        return buffer[start:start + tensor.size * batch].reshape((batch,) + tuple(tensor.shape))

    def fit(self, x, y, **options):
        """Train (cnncc.train.fit); returns the History."""
        from .train import fit

        return fit(self, x, y, **options)

    def evaluate(self, x, y, batch_size: int = 1000) -> dict[str, float]:
        from .train import evaluate

        return evaluate(self, x, y, batch_size)

    def save(self, path, epoch: int | None = None) -> None:
        """Parameters, optimizer state and step, written atomically (.npz)."""
        from .checkpoint import save

        save(self, path, epoch)

    def load(self, path, strict: bool = True) -> "Model":
        """Load a file written by save; on any problem raise and leave the model unchanged.
        strict=False (transfer learning): copy the parameters whose layer name and shape match,
        from a file of any spec; `load_report` says what was copied and what was skipped."""
        from .checkpoint import load, load_matching

        if not isinstance(strict, bool):
            raise ValueError(f"strict must be True or False, got {strict!r}")
        if strict:
            self.loaded_epoch, self.load_report = load(self, path), None
        else:
            self.load_report, self.loaded_epoch = load_matching(self, path), None
        return self

    def quantize(self, calibration, method: str = "minmax", percentile: float = 99.99, build_dir=None):
        """Post-training int8 quantization (TFLite's scheme) calibrated on `calibration` (an array or an
        .npz): a QuantizedModel compiled through cffi (cnncc/quantize)."""
        from .quantize import quantize

        return quantize(self, calibration, method, percentile, build_dir)

    def summary(self, batch: int | None = None, print_fn=print) -> None:
        """Print the shape report, as `cnncc check` does: every layer's output shape, parameters,
        MACs and receptive field, and the memory training at `batch` allocates (Keras's summary())."""
        from .report import build_report

        report = self.report if batch is None else build_report(self.analysis.net, self.program, batch)
        print_fn(report.to_text())

    def __repr__(self) -> str:
        return (f"<cnncc.Model {self._name}: input {self.input_shape} -> output {self.output_shape}, "
                f"{self.program.num_params} parameters, {self.program.dtype}>")
