"""The PyTorch side of the benchmarks: a checked cnncc spec as the equivalent torch module, its
optimizer, loss and targets.

The module itself is cnncc.torch's (`cnncc.torch.to_module`): the same layers in the same order,
the same parameter layout, so weights copy across (`cnncc.torch.state_dict`) and the two forwards
can be compared before anything is timed. This file adds only what a training loop needs.

Torch is imported here and only here; the harness works without it.
"""
from __future__ import annotations

import numpy as np
import torch

import cnncc.torch


def build(report) -> torch.nn.Module:
    """The torch module of a checked spec (`cnncc.check(spec)`), torch's default init."""
    return cnncc.torch.to_module(report.spec)


def optimizer(module: torch.nn.Module, spec) -> torch.optim.Optimizer:
    """The spec's optimizer with its settings (PyTorch's update rules are cnncc's)."""
    opt, s = spec.optimizer, spec.optimizer.settings
    params = [p for p in module.parameters() if p.requires_grad]
    if opt.type == "adam":
        return torch.optim.Adam(params, lr=opt.lr, betas=(s.get("beta1", 0.9), s.get("beta2", 0.999)),
                                eps=s.get("eps", 1e-8), weight_decay=s.get("weight_decay", 0.0))
    if opt.type == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=s.get("momentum", 0.0),
                               nesterov=bool(s.get("nesterov", False)), weight_decay=s.get("weight_decay", 0.0))
    raise ValueError(f"no torch equivalent for optimizer '{opt.type}'")


def loss(spec) -> torch.nn.Module:
    """The spec's loss: softmax cross-entropy on logits, MSE, or BCE on the sigmoid output."""
    return cnncc.torch.loss(spec)


def targets(y: np.ndarray, spec) -> torch.Tensor:
    """cnncc targets (int32 labels or float arrays) as what the torch loss takes."""
    if spec.loss == "softmax_cross_entropy":
        return torch.from_numpy(y.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(y))
