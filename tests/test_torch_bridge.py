"""cnncc.torch against PyTorch itself: to_module's outputs and gradients equal cnncc's (float64,
1e-10) for every example spec; state_dicts in and out, with a user's own module matched one to one
and every mismatch named; and the modules a PyTorch user writes (LeNet, a small ResNet, a
depthwise-separable net, a 1-D conv net, a decoder with transposed convs, upsampling and a global
max pool), exported by both of torch's ONNX exporters, imported,
compiled and run, agreeing with PyTorch within 1e-5."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

import cnncc
import interop_cases
from reference import rel_err
from tools import need_module

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
INSTALL = "pip install torch==2.13.0"

if os.environ.get("CNNCC_REQUIRE_TOOLS") == "1":
    torch = need_module("torch", INSTALL)
else:
    torch = pytest.importorskip("torch", reason=f"torch is not installed ({INSTALL})")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import cnncc.torch  # noqa: E402


def float64_model(path, build_dir):
    """A float64 model of a spec file (or dict), its parameters away from their initial values."""
    spec = yaml.safe_load(path.read_text()) if isinstance(path, Path) else dict(path)
    spec["dtype"] = "float64"
    model = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",)).init(1)
    rng = np.random.default_rng(4)
    for key, view in model.params.items():
        if key.endswith((".gamma", ".running_var")):
            view[...] = rng.uniform(0.5, 1.5, view.shape)
        elif key.endswith((".beta", ".running_mean", ".bias")):
            view[...] = rng.normal(0, 0.3, view.shape)
    return model


def same_dropout_masks(model, net, batch):
    """Make the torch module's dropouts apply the masks of cnncc's most recent training pass (read
    back from its activations: output / input), so the two training passes are the same function."""
    for layer in model.spec.layers:
        if layer.kind != "dropout":
            continue
        before = model.activation(layer.inputs[0], batch) if layer.inputs[0] != "input" else None
        after = model.activation(layer.name, batch)
        mask = torch.from_numpy(np.where(before != 0, after / np.where(before != 0, before, 1), 0.0))
        getattr(net, layer.name).register_forward_hook(lambda module, args, out, mask=mask: args[0] * mask)


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_to_module_outputs_and_gradients_equal_cnncc_in_float64(spec, build_dir):
    assert_same_outputs_and_gradients(float64_model(spec, build_dir))


@pytest.mark.parametrize("case", sorted(interop_cases.SPECS))
def test_to_module_of_the_upsampling_kinds_in_float64(case, build_dir):
    """ConvTranspose2d with groups, per-axis stride, padding, output_padding and dilation; Upsample
    nearest and bilinear with unequal factors; global max of an image and of a signal."""
    assert_same_outputs_and_gradients(float64_model(interop_cases.SPECS[case], build_dir))


def assert_same_outputs_and_gradients(model):
    net = cnncc.torch.to_module(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4,) + model.input_shape)
    # class labels for cross-entropy; for a regression loss (the autoencoder's MSE) targets shaped
    # like the output, in [0, 1] so that they suit BCE too
    y = rng.integers(0, model.output_shape[0], 4) if model.spec.loss == "softmax_cross_entropy" else \
        rng.uniform(size=(4,) + model.output_shape)
    net.eval()
    with torch.no_grad():
        assert rel_err(net(torch.from_numpy(x)).numpy(), model.predict(x)) <= 1e-10
    loss, grads = model.gradients(x, y, seed=7)
    same_dropout_masks(model, net, 4)
    net.train()
    torch_loss = cnncc.torch.loss(model.spec)(net(torch.from_numpy(x)), torch.from_numpy(y))
    torch_loss.backward()
    assert abs(torch_loss.item() - loss) <= 1e-10 * abs(loss)
    parameters = dict(net.named_parameters())
    names = cnncc.torch.parameter_names(model)
    assert set(grads) == {k for k in names if parameters.get(names[k]) is not None}
    # A bias right before a batchnorm in training mode has a gradient of zero up to rounding (1e-17
    # on both sides, unrelated): relative to itself that is noise, so each gradient's scale is at
    # least a thousandth of the largest gradient's.
    floor = 1e-3 * max(np.abs(grad).max() for grad in grads.values())
    for key, grad in grads.items():
        theirs = parameters[names[key]].grad.numpy()
        scale = max(np.abs(theirs).max(), np.abs(grad).max(), floor)
        assert np.abs(theirs - grad).max() <= 1e-10 * scale, key


def test_state_dict_round_trip_and_torch_loads_it_strictly(build_dir):
    model = float64_model(ROOT / "specs" / "resnet_small.yaml", build_dir)
    state = cnncc.torch.state_dict(model)
    assert "stem_bn.weight" in state and "stem_bn.num_batches_tracked" in state and "stem_bn.gamma" not in state
    net = cnncc.torch.to_module(model.spec)
    net.load_state_dict(state, strict=True)
    other = float64_model(ROOT / "specs" / "resnet_small.yaml", build_dir).init(9)
    used = cnncc.torch.load_state_dict(other, net)
    assert used["stem_bn.gamma"] == "stem_bn.weight"
    for key in model.params:
        np.testing.assert_array_equal(other.params[key], model.params[key])


class LeNet(nn.Module):
    """The classic, as a PyTorch user writes it (names of their own choosing)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


LENET_SPEC = {"name": "lenet", "input": {"channels": 1, "height": 28, "width": 28}, "layers": [
    {"name": "c1", "type": "conv2d", "filters": 6, "kernel": 5, "padding": 2, "activation": "relu"},
    {"type": "maxpool2d", "kernel": 2},
    {"name": "c2", "type": "conv2d", "filters": 16, "kernel": 5, "activation": "relu"},
    {"type": "maxpool2d", "kernel": 2}, {"type": "flatten"},
    {"name": "f1", "type": "dense", "units": 120, "activation": "relu"},
    {"name": "f2", "type": "dense", "units": 84, "activation": "relu"}, {"name": "f3", "type": "dense", "units": 10}]}


def test_a_users_module_loads_one_to_one_by_order_and_mismatches_are_named(build_dir):
    torch.manual_seed(0)
    user = LeNet().eval()
    model = cnncc.compile(LENET_SPEC, build_dir=build_dir)
    used = cnncc.torch.load_state_dict(model, user.state_dict())
    assert used["c1.weight"] == "features.0.weight" and used["f3.bias"] == "classifier.4.bias"
    x = np.random.default_rng(1).normal(size=(3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        assert rel_err(model.predict(x), user(torch.from_numpy(x)).numpy()) <= 1e-5
    before = {k: v.copy() for k, v in model.params.items()}
    state = user.state_dict()
    state["features.3.weight"] = torch.zeros(16, 6, 3, 3)
    with pytest.raises(ValueError, match=r"torch 'features.3.weight' has shape \(16, 6, 3, 3\), cnncc 'c2.weight' "
                                         r"needs \(16, 6, 5, 5\)"):
        cnncc.torch.load_state_dict(model, state)
    del state["classifier.4.weight"], state["classifier.4.bias"]
    with pytest.raises(ValueError, match="the model has 5 layers with parameters .* and the state_dict 4"):
        cnncc.torch.load_state_dict(model, state)
    with pytest.raises(ValueError, match="cnncc layer 'f3' has bias, weight; torch module 'classifier.2x' has nothing"):
        cnncc.torch.load_state_dict(model, user.state_dict(), layers={"c1": "features.0", "c2": "features.3",
                                                                      "f1": "classifier.0", "f2": "classifier.2",
                                                                      "f3": "classifier.2x"})
    for key, value in before.items():
        np.testing.assert_array_equal(model.params[key], value)  # nothing was copied


# ---- torch modules through both ONNX exporters ------------------------------------------------
class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1, self.block2 = Residual(8), Residual(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.down(self.block2(self.block1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
            nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(16, 16, 3, stride=2, groups=16), nn.Conv2d(16, 12, 1),
            nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(12 * 2 * 2, 4), nn.Softmax(dim=1))

    def forward(self, x):
        return self.layers(x)


class Signal1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 6, 5, padding=2)
        self.pool = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(6, 8, 4, stride=2, padding="valid")
        self.act = nn.LeakyReLU(0.1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.act(self.conv2(self.pool(torch.tanh(self.conv1(x)))))
        return torch.sigmoid(self.head(x.mean(dim=2)))


class Decoder(nn.Module):
    """Upsampling as a PyTorch user writes it: a transposed conv, nearest and bilinear upsampling,
    and a global max pool."""

    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(3, 6, 3, stride=2, padding=1, output_padding=1)
        self.near = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(6, 4, 3, groups=2)
        self.up2 = nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2, bias=False)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.near(torch.relu(self.up1(x)))
        x = F.interpolate(torch.tanh(self.conv(x)), scale_factor=(3, 2), mode="bilinear", align_corners=False)
        return self.fc(torch.flatten(self.pool(self.up2(x)), 1))


USER_MODULES = {"lenet": (LeNet, (1, 28, 28)), "resnet": (SmallResNet, (3, 12, 12)),
                "depthwise": (DepthwiseSeparable, (3, 9, 9)), "signal1d": (Signal1d, (2, 40)),
                "decoder": (Decoder, (3, 4, 5))}


def _trained_looking(module):
    """Batchnorm statistics away from 0 and 1, as after training."""
    generator = torch.Generator().manual_seed(3)
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            sub.running_mean.uniform_(-0.5, 0.5, generator=generator)
            sub.running_var.uniform_(0.5, 1.5, generator=generator)
            sub.weight.data.uniform_(0.5, 1.5, generator=generator)
    return module.eval()


@pytest.mark.parametrize("exporter", ["torchscript", "torchscript-unfolded", "dynamo", "dynamo-unoptimised"])
@pytest.mark.parametrize("which", sorted(USER_MODULES))
def test_torch_modules_exported_by_either_exporter_import_and_agree(which, exporter, build_dir, tmp_path):
    need_module("onnx", 'pip install "cnncc[onnx]"')
    if exporter.startswith("dynamo"):
        need_module("onnxscript", "pip install onnxscript")
    import cnncc.onnx

    cls, shape = USER_MODULES[which]
    torch.manual_seed(0)
    module = _trained_looking(cls())
    example = torch.randn(2, *shape)
    path = tmp_path / f"{which}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter.startswith("torchscript"):
            torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}}, do_constant_folding=exporter == "torchscript")
        else:
            torch.onnx.export(module, (example,), str(path), dynamo=True, optimize=exporter == "dynamo",
                              verbose=False)
    spec, weights = cnncc.onnx.load(path)
    model = cnncc.compile(spec, build_dir=build_dir, cflags=("-O1",))
    for key, array in weights.items():
        model.params[key][...] = array
    x = np.random.default_rng(2).normal(size=(2, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert rel_err(model.predict(x), expected) <= 1e-5
    if exporter == "torchscript-unfolded" and which == "resnet":
        assert sum(layer.kind == "batchnorm" for layer in spec.layers) == 5


def test_a_missing_torch_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\nimport cnncc, cnncc.torch\n"
            "try:\n    cnncc.torch.to_module('x.yaml')\nexcept ImportError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "cnncc.torch needs the Python package 'torch', which is not installed: pip install \"cnncc[torch]\"" \
        in done.stdout


def test_every_registered_layer_kind_has_a_torch_module():
    from cnncc.layers import REGISTRY
    from cnncc.torch.modules import BUILDERS

    assert set(REGISTRY) <= set(BUILDERS), sorted(set(REGISTRY) - set(BUILDERS))
