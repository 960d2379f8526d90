"""One fixed batch bound to a model's C entry points, for callers that time or drive the passes
one at a time (bench's profiler, distributed training): each call goes straight to C with no
per-call checks, because `Model.bind` validated and converted the batch once."""
from __future__ import annotations

import numpy as np


class BoundBatch:
    """The passes of a Model over one batch. The arrays stay alive as long as this object, so the
    pointers C receives stay valid. Made by Model.bind; nothing here allocates per call."""

    def __init__(self, c, context, x: np.ndarray, y: np.ndarray | None, x_ptr, y_ptr, hyper):
        self._c, self._context = c, context
        self.x, self.y = x, y  # kept alive: C reads them through x_ptr and y_ptr
        self.batch = int(x.shape[0])
        self.training = y is not None
        self._x_ptr, self._y_ptr = x_ptr, y_ptr
        self._hyper = hyper  # () -> the model's filled NAME_hyper
        self._loss = c.ffi.new("double *")  # train_step's out-argument

    def _mode(self, training: bool | None) -> int:
        return int(self.training if training is None else training)

    def forward(self, seed: int = 0, training: bool | None = None) -> None:
        """NAME_forward (training mode by default when the batch has targets)."""
        self._c.forward(self._context, self._x_ptr, self.batch, self._mode(training), seed)

    def forward_op(self, op: int, seed: int = 0, training: bool | None = None) -> None:
        self._c.forward_op(self._context, self._x_ptr, self.batch, self._mode(training), seed, op)

    def loss(self) -> float:
        return float(self._c.loss(self._context, self._y_ptr, self.batch))

    def zero_grad(self) -> None:
        self._c.zero_grad(self._context)

    def backward(self, seed: int = 0) -> None:
        """NAME_backward: zeroes the activation gradients, then adds the loss gradient to grads."""
        self._c.backward(self._context, self._x_ptr, self._y_ptr, self.batch, seed)

    def backward_op(self, op: int, seed: int = 0) -> None:
        self._c.backward_op(self._context, self._x_ptr, self.batch, seed, op)

    def step(self, step_count: int) -> bool:
        """NAME_step with the model's hyper-parameters at step `step_count` (counted from 1):
        whether it updated (it refuses an update that would not be finite)."""
        hyper = self._hyper()
        hyper.step = step_count
        return bool(self._c.step(self._context, hyper))

    def train_step(self, step_count: int, seed: int = 0) -> float:
        """NAME_train_step: the loss (whether or not the update was taken)."""
        hyper = self._hyper()
        hyper.step = step_count
        self._c.train_step(self._context, self._x_ptr, self._y_ptr, self.batch, hyper, seed, self._loss)
        return float(self._loss[0])

    def full_pass(self, seed: int = 0) -> None:
        """forward, loss and backward: afterwards every activation and gradient is valid."""
        self.forward(seed)
        if self.training:
            self.loss()
            self.zero_grad()
            self.backward(seed)
