"""PyTorch in and out: `to_module(model)` is a torch.nn.Module computing the same network with the
same weights; `state_dict(model)` and `load_state_dict(model, state)` carry weights across, with
the name mapping explicit (`mapping`, `parameter_names`). Needs torch (pip install "cnncc[torch]"),
imported only when one of these is called."""
from __future__ import annotations


def to_module(model):
    """A torch.nn.Module of the same network: of a compiled Model, with its current weights; of a
    spec (path, dict, Spec, Report), with torch's default initialisation. In the spec's dtype."""
    from .modules import build
    from .weights import state_dict

    module = build(model)
    if hasattr(model, "params"):
        module.load_state_dict(state_dict(model))
    return module


def state_dict(model):
    """The model's parameters as to_module(model)'s state_dict."""
    from .weights import state_dict as make

    return make(model)


def load_state_dict(model, state, layers=None):
    """Copy a state_dict (or a module's) into the model; returns the mapping used (cnncc key -> torch key)."""
    from .weights import load_state_dict as load

    return load(model, state, layers)


def mapping(model, state, layers=None):
    """cnncc key -> state_dict key, as load_state_dict would use it."""
    from .weights import mapping as find

    return find(model, state, layers)


def parameter_names(model):
    """cnncc key -> the key in to_module(model)'s state_dict."""
    from .weights import parameter_names as names

    return names(model)


def loss(spec):
    """The spec's loss as a torch module (cross-entropy of logits, MSE, BCE)."""
    from .modules import loss as make

    return make(spec)


__all__ = ["load_state_dict", "loss", "mapping", "parameter_names", "state_dict", "to_module"]
