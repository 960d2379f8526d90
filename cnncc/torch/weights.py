"""Between cnncc's parameters and PyTorch's state_dicts: names, layouts, and the checks.

The layouts are the same (cnncc stores weights in PyTorch's: conv (out, in/groups, kh, kw),
conv_transpose2d (in, out/groups, kh, kw), dense (out, in)); the names differ only for batchnorm (gamma, beta are weight, bias) and where a
layer's name is an attribute nn.Module already has (modules.attribute_name). A user's own module
whose parameterised layers correspond one to one is matched by name where every name matches, else
by order, and the mapping used is returned so it can be read; every mismatch is named.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .modules import attribute_name, torch

TORCH_NAMES = {"gamma": "weight", "beta": "bias"}  # batchnorm; every other parameter keeps its name
IGNORED = ("num_batches_tracked",)  # torch's batchnorm counter: cnncc has no such state


def _layers(model) -> "OrderedDict[str, list[str]]":
    """cnncc layer -> its parameter names (weight, bias, gamma, ...), for layers that have any."""
    layers: OrderedDict[str, list[str]] = OrderedDict()
    for key in model.params:
        layer, name = key.rsplit(".", 1)
        layers.setdefault(layer, []).append(name)
    return layers


def parameter_names(model) -> dict[str, str]:
    """cnncc key -> the key in the state_dict of to_module(model)."""
    return {f"{layer}.{name}": f"{attribute_name(layer)}.{TORCH_NAMES.get(name, name)}"
            for layer, names in _layers(model).items() for name in names}


def state_dict(model) -> "OrderedDict[str, torch.Tensor]":
    """The model's parameters as the state_dict of to_module(model) (copies, in the model's dtype)."""
    out = OrderedDict()
    names = parameter_names(model)
    for key, torch_key in names.items():
        out[torch_key] = torch.from_numpy(np.array(model.params[key]))
        if key.endswith(".running_var"):
            out[torch_key.rsplit(".", 1)[0] + ".num_batches_tracked"] = torch.tensor(0)
    return out


def _torch_layers(state) -> "OrderedDict[str, dict[str, object]]":
    groups: OrderedDict[str, dict] = OrderedDict()
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        if name not in IGNORED:
            groups.setdefault(prefix, {})[name] = value
    return groups


def mapping(model, state, layers: dict[str, str] | None = None) -> dict[str, str]:
    """cnncc key -> state_dict key: `layers` ({cnncc layer: torch module path}) where given, else
    by name where every name matches (to_module's own naming), else the parameterised layers in
    order. Raises ValueError naming what does not correspond."""
    ours, theirs = _layers(model), _torch_layers(state)
    if layers is None:
        by_name = parameter_names(model)
        if all(key in state for key in by_name.values()):
            return by_name
        if len(ours) != len(theirs):
            raise ValueError(f"the model has {len(ours)} layers with parameters ({', '.join(ours)}) and the "
                             f"state_dict {len(theirs)} ({', '.join(p or '<top>' for p in theirs)}); they do not "
                             "correspond one to one: pass layers={cnncc layer: torch module path}")
        layers = dict(zip(ours, theirs))
    result = {}
    for layer, names in ours.items():
        if layer not in layers:
            raise ValueError(f"layers= names no torch module for cnncc layer '{layer}'")
        prefix = layers[layer]
        group = theirs.get(prefix, {})
        wanted = {TORCH_NAMES.get(name, name) for name in names}
        if set(group) != wanted:
            raise ValueError(f"cnncc layer '{layer}' has {', '.join(sorted(wanted))}; torch module "
                             f"'{prefix}' has {', '.join(sorted(group)) or 'nothing'}")
        for name in names:
            result[f"{layer}.{name}"] = f"{prefix}.{TORCH_NAMES.get(name, name)}" if prefix else \
                TORCH_NAMES.get(name, name)
    return result


def load_state_dict(model, state, layers: dict[str, str] | None = None) -> dict[str, str]:
    """Copy a PyTorch state_dict (or a module's) into the model; returns the mapping used (cnncc key
    -> torch key). Everything is checked before anything is copied: a mismatch leaves the model as
    it was, and the error names the cnncc and torch tensors involved."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    used = mapping(model, state, layers)
    values = {}
    for key, torch_key in used.items():
        tensor = state[torch_key]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"torch '{torch_key}' for cnncc '{key}' is not a floating-point tensor")
        array = tensor.detach().cpu().numpy()
        target = model.params[key]
        if array.shape != target.shape:
            raise ValueError(f"torch '{torch_key}' has shape {tuple(array.shape)}, cnncc '{key}' needs "
                             f"{tuple(target.shape)}")
        if not np.isfinite(array).all():
            raise ValueError(f"torch '{torch_key}' contains NaN or infinite values")
        values[key] = array
    for key, array in values.items():
        model.params[key][...] = array
    return used
