"""`cnncc train` with callbacks and files, `cnncc evaluate`, `cnncc plot`, and the rough edges a
new user hit: report conventions, a missing spec, `| head`, hints, summary, transfer learning."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

import cnncc
from cnncc.checkpoint import CheckpointError
from cnncc.cli import main as cli_main
from cnncc.history import History
from tools import need_module

ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    "name": "cli_small",
    "input": {"channels": 1, "height": 10, "width": 10},
    "layers": [
        {"name": "conv", "type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
        {"name": "pool", "type": "maxpool2d", "kernel": 2},
        {"type": "flatten"},
        {"name": "out", "type": "dense", "units": 3},
    ],
    "loss": "softmax_cross_entropy",
    "optimizer": {"type": "adam", "lr": 0.01},
    "training": {"batch_size": 32, "epochs": 3},
}


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cnncc", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "cli_small.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, after checking the signature and the chunk's CRC."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", raw[29:33])[0] == zlib.crc32(raw[12:29])
    return struct.unpack(">II", raw[16:24])


def png_pixels(path: Path) -> np.ndarray:
    return need_module("matplotlib.image", "pip install matplotlib").imread(path)[..., :3]


def test_train_with_validation_early_stopping_best_log_and_plot(spec_file, tmp_path, build_dir):
    need_module("matplotlib", "pip install matplotlib")
    out, best, log, curves = (tmp_path / n for n in ("w.npz", "best.npz", "history.csv", "curves.png"))
    result = _cli("train", str(spec_file), "--limit", "300", "--epochs", "4", "--validation-split", "0.2",
                  "--early-stopping", "1", "--save-best", str(best), "--log", str(log), "--plot", str(curves),
                  "--out", str(out), "--build-dir", str(build_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"weights will be saved to {out}" in result.stdout and f"saved weights to {out}" in result.stdout
    history = History.from_csv(log)
    assert 1 <= len(history) <= 4 and all(v is not None for v in history["val_loss"])
    assert out.is_file() and best.is_file()
    width, height = png_size(curves)
    assert 600 <= width <= 2000 and 250 <= height <= 1000
    # Off a terminal: one line per epoch on stderr, no bar.
    assert sum(line.startswith("epoch ") for line in result.stderr.splitlines()) == len(history)


def test_plot_command_draws_different_histories_differently(tmp_path):
    need_module("matplotlib", "pip install matplotlib")
    for name, losses in (("a", [1.0, 0.6, 0.4, 0.3]), ("b", [2.0, 1.9, 0.5, 0.45])):
        History([{"epoch": e, "loss": loss, "accuracy": 1 - loss / 2, "val_loss": loss * 1.1,
                  "val_accuracy": 0.9 - loss / 3, "lr": 0.01} for e, loss in enumerate(losses, 1)]
                ).to_csv(tmp_path / f"{name}.csv")
        assert cli_main(["plot", str(tmp_path / f"{name}.csv"), "-o", str(tmp_path / f"{name}.png")]) == 0
    assert png_size(tmp_path / "a.png") == png_size(tmp_path / "b.png")
    a, b = png_pixels(tmp_path / "a.png"), png_pixels(tmp_path / "b.png")
    assert a.shape == b.shape and (a != b).any(axis=2).mean() > 0.001
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 10  # drawn, not blank
    assert cli_main(["plot", str(tmp_path / "a.csv"), "-o", str(tmp_path / "a.jpg")]) == 1


def test_without_matplotlib_the_commands_say_what_to_install(tmp_path, monkeypatch, capsys):
    History([{"epoch": 1, "loss": 1.0}]).to_csv(tmp_path / "h.csv")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert cli_main(["plot", str(tmp_path / "h.csv"), "-o", str(tmp_path / "h.png")]) == 1
    assert "pip install 'cnncc[plot]'" in capsys.readouterr().err and not (tmp_path / "h.png").exists()


def test_evaluate_prints_metrics_and_draws_the_confusion_matrix(spec_file, tmp_path, build_dir):
    need_module("matplotlib", "pip install matplotlib")
    weights = tmp_path / "w.npz"
    assert _cli("train", str(spec_file), "--limit", "300", "--epochs", "2", "--out", str(weights), "--quiet",
                "--build-dir", str(build_dir), cwd=tmp_path).returncode == 0
    picture = tmp_path / "confusion.png"
    result = _cli("evaluate", str(spec_file), "--weights", str(weights), "--limit", "300", "--plot", str(picture),
                  "--build-dir", str(build_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "loss " in text and "accuracy " in text and "class  precision  recall  support" in text
    assert "confusion matrix (rows: true class, columns: predicted class)" in text
    # The matrix's counts add up to the number of test samples evaluated.
    rows = text.split("columns: predicted class)\n")[1].splitlines()[1:4]
    counts = np.array([[int(v.replace(",", "")) for v in row.split()[1:]] for row in rows])
    assert counts.shape == (3, 3) and counts.sum() == 50  # --limit 300 -> 300 // 6 synthetic test samples
    model = cnncc.compile(SPEC, build_dir=build_dir).load(weights)
    x, y = cnncc.data.synthetic((1, 10, 10), 3, 300, 50)[1]
    assert f"accuracy {100 * model.evaluate(x, y)['accuracy']:.2f}%" in text
    assert 300 <= png_size(picture)[0] <= 1500
    missing = _cli("evaluate", str(spec_file), "--weights", str(tmp_path / "none.npz"), cwd=tmp_path)
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_train_never_overwrites_weights_silently(spec_file, tmp_path, build_dir):
    args = ("train", str(spec_file), "--limit", "60", "--epochs", "1", "--quiet", "--build-dir", str(build_dir))
    first = _cli(*args, cwd=tmp_path)
    target = tmp_path / "cli_small_weights.npz"
    assert first.returncode == 0 and f"weights will be saved to {target}" in first.stdout
    before = target.read_bytes()
    second = _cli(*args, cwd=tmp_path)
    assert second.returncode == 1 and f"{target} exists: pass --out PATH" in second.stderr
    assert target.read_bytes() == before and "Traceback" not in second.stderr
    assert _cli(*args, "--force", cwd=tmp_path).returncode == 0
    needs = _cli(*args, "--force", "--early-stopping", "2", cwd=tmp_path)
    assert needs.returncode == 1 and "add --validation-split" in needs.stderr


def test_data_is_checked_before_compiling(tmp_path, spec_file):
    x = np.zeros((20, 10, 10, 1), np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(20, int))
    result = _cli("train", str(spec_file), "--data", str(tmp_path / "d.npz"), "--build-dir",
                  str(tmp_path / "never"), cwd=tmp_path)
    assert result.returncode == 1 and "channels-last" in result.stderr and "x.transpose(0, 3, 1, 2)" in result.stderr
    assert not (tmp_path / "never").exists()  # nothing compiled
    np.savez(tmp_path / "onehot.npz", x_train=np.zeros((20, 1, 10, 10)), y_train=np.eye(3)[np.arange(20) % 3])
    result = _cli("train", str(spec_file), "--data", str(tmp_path / "onehot.npz"), cwd=tmp_path)
    assert result.returncode == 1 and "one-hot" in result.stderr and "argmax" in result.stderr


def test_train_help_has_texts_and_defaults(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--epochs EPOCHS passes over the training data (default: the spec's training.epochs)",
                     "(default: the spec's training.batch_size)", "learning rate (default: the spec's optimizer lr)",
                     "(default 0)", "$CNNCC_BUILD_DIR, else ./build", "--force"):
        assert expected in text, expected


def test_a_missing_spec_file_has_its_own_exit_code(tmp_path):
    result = _cli("check", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 3 and "cannot read spec: No such file or directory" in result.stderr
    invalid = tmp_path / "bad.yaml"
    invalid.write_text("name: 1bad\n")
    assert _cli("check", str(invalid), cwd=tmp_path).returncode == 2


def test_a_closed_pipe_ends_quietly(tmp_path):
    layers = [{"type": "flatten"}, {"type": "dense", "units": 4}] + [{"type": "relu"} for _ in range(1500)]
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump({"name": "long", "input": {"channels": 1, "length": 8}, "layers": layers}))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(f"'{sys.executable}' -m cnncc check '{spec}' | head -n 1", shell=True,
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.startswith("long: input") and result.stderr == ""


def test_report_conventions(tmp_path):
    from cnncc.report import byte_size

    assert byte_size(999) == "999 bytes" and byte_size(72_520) == "72,520 bytes (72.5 KB)"
    assert byte_size(10_418_184) == "10,418,184 bytes (10.4 MB)" and byte_size(3 * 10 ** 9).endswith("(3.0 GB)")
    report = cnncc.check(ROOT / "specs" / "lenet5.yaml")
    text = report.to_text()
    assert "input 32x32x3 (HxWxC; arrays and JSON are C x H x W = [3, 32, 32])" in text
    assert "activation memory: 40,216 bytes (40.2 KB) per sample" in text  # each layer's output once
    signal = cnncc.check(ROOT / "specs" / "signal1d.yaml").to_text()
    assert "output (LxC)" in signal and "HxWxC" not in signal
    as_json = json.loads(report.to_json(explain=True))
    assert as_json["layers"][0]["explain"] == list(report.rows[0].explain) and as_json["layers"][0]["explain"]
    assert "#### Formulas" in report.to_markdown(explain=True) and report.rows[0].explain[0] in \
        report.to_markdown(explain=True)
    assert "#### Formulas" not in report.to_markdown()


def test_a_dead_branch_is_warned_about():
    spec = {"name": "dead", "input": {"channels": 1, "length": 8},
            "layers": [{"type": "flatten"}, {"name": "a", "type": "dense", "units": 4}, {"name": "unused", "type": "dense", "units": 2},
                       {"name": "b", "type": "dense", "units": 3, "inputs": ["a"]}]}
    report = cnncc.check(spec)
    assert report.warnings == ("layer 'unused' (dense) feeds nothing: its output is computed and thrown away "
                               "(a dead branch); connect it with `inputs:` or remove it",)
    assert "warning: layer 'unused'" in report.to_text() and json.loads(report.to_json())["warnings"]
    assert cnncc.check(ROOT / "specs" / "resnet_small.yaml").warnings == ()


def test_a_dead_branch_is_every_layer_the_output_does_not_depend_on():
    # bn1 -> relu -> bn2 feeds nothing, the output adds the input to itself: all three are dead
    spec = {"name": "dead", "input": {"channels": 1, "length": 1},
            "layers": [{"name": "bn1", "type": "batchnorm"}, {"name": "act", "type": "relu"},
                       {"name": "bn2", "type": "batchnorm"}, {"type": "add", "inputs": ["input", "input"]}]}
    report = cnncc.check(spec)
    assert report.warnings == ("layer 'bn2' (batchnorm) feeds nothing: its output is computed and thrown away "
                               "(a dead branch) (so do 'bn1', 'act', which only it reads); connect it with "
                               "`inputs:` or remove it",)
    assert [layer.name for layer in report.net.dead_layers] == ["bn1", "act", "bn2"]


@pytest.mark.parametrize("typed, meant", [("cross_entropy", "softmax_cross_entropy"),
                                          ("categorical_crossentropy", "softmax_cross_entropy"),
                                          ("sparse_categorical_crossentropy", "softmax_cross_entropy"),
                                          ("nll", "softmax_cross_entropy"), ("CrossEntropyLoss", "softmax_cross_entropy"),
                                          ("binary_crossentropy", "binary_cross_entropy"),
                                          ("mean_squared_error", "mse")])
def test_loss_names_from_keras_and_pytorch_get_a_hint(typed, meant):
    with pytest.raises(cnncc.SpecError) as caught:
        cnncc.load_spec(f"name: n\ninput: {{channels: 1, length: 8}}\nlayers: [{{type: flatten}}]\nloss: {typed}\n")
    assert f"hint: use {meant}" in caught.value.format() and "<string>:4:7" in caught.value.format()


def test_tabs_in_yaml_get_a_use_spaces_hint():
    with pytest.raises(cnncc.SpecError) as caught:
        cnncc.load_spec("name: n\ninput:\n\tchannels: 1\n\tlength: 8\nlayers: [{type: flatten}]\n")
    assert "<string>:3:1" in caught.value.format()
    assert "hint: YAML indents with spaces, never tabs" in caught.value.format()


def test_model_summary(build_dir):
    model = cnncc.compile(SPEC, build_dir=build_dir)
    printed = []
    model.summary(print_fn=printed.append)
    assert printed == [cnncc.check(SPEC).to_text()]
    printed.clear()
    model.summary(batch=4, print_fn=printed.append)
    assert "training memory at batch 4" in printed[0]


def test_transfer_learning_loads_by_layer_name(build_dir, tmp_path):
    source = cnncc.compile(SPEC, build_dir=build_dir).init(5)
    source.save(tmp_path / "source.npz")
    wider = dict(SPEC, name="cli_wider", layers=SPEC["layers"][:3] + [{"name": "out", "type": "dense", "units": 5}])
    target = cnncc.compile(wider, build_dir=build_dir).init(1)
    before_out = target.params["out.weight"].copy()
    with pytest.raises(CheckpointError, match="strict=False"):
        target.load(tmp_path / "source.npz")
    target.load(tmp_path / "source.npz", strict=False)
    report = target.load_report
    assert report.loaded == ("conv.weight", "conv.bias")
    assert [key for key, _ in report.skipped] == ["out.weight", "out.bias"]
    assert dict(report.skipped)["out.weight"] == "the file has float32 (3, 64), this model (5, 64)"
    assert np.array_equal(target.params["conv.weight"], source.params["conv.weight"])
    assert np.array_equal(target.params["out.weight"], before_out) and target.step_count == 0
    assert "skipped out.weight" in str(report)
    unrelated = cnncc.compile({"name": "unrelated", "input": {"channels": 1, "length": 8},
                               "layers": [{"type": "flatten"}, {"name": "z", "type": "dense", "units": 2}]},
                              build_dir=build_dir)
    with pytest.raises(ValueError, match="no parameter of this model"):
        unrelated.load(tmp_path / "source.npz", strict=False)


def test_a_renamed_spec_still_loads_its_own_weights(build_dir, tmp_path):
    model = cnncc.compile(SPEC, build_dir=build_dir).init(3)
    model.save(tmp_path / "w.npz")
    renamed = cnncc.compile(dict(SPEC, name="cli_renamed"), build_dir=build_dir).load(tmp_path / "w.npz")
    assert all(np.array_equal(renamed.params[k], model.params[k]) for k in model.params)
    changed = dict(SPEC, name="cli_changed", layers=SPEC["layers"][:3] + [{"name": "head", "type": "dense",
                                                                          "units": 3}])
    with pytest.raises(ValueError, match="do not match"):
        cnncc.compile(changed, build_dir=build_dir).load(tmp_path / "w.npz")


def test_readme_documents_the_npz_layout():
    readme = (ROOT / "README.md").read_text()
    for expected in ("`x_train`", "`y_train`", "`x_test`", "`y_test`", "N x C x H x W", "float `y`",
                     "stratified", "uint8"):
        assert expected in readme, expected
