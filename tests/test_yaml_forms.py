"""Plain scalars that YAML 1.1 and YAML 1.2 read differently are refused with a location and a
hint; the forms both read alike, and quoted strings, are accepted."""
from __future__ import annotations

import pytest

import cnncc
from cnncc import SpecError

LAYER = "name: t\ninput: {channels: 1, length: 32}\nlayers:\n  - {type: conv1d, filters: %s, kernel: 3}\n"
OPTIMIZER = ("name: t\ninput: {channels: 1, length: 8}\nlayers:\n  - {type: flatten}\n  - {type: dense, units: 2}\n"
             "loss: mse\noptimizer: {type: sgd, momentum: 0.5, nesterov: %s}\n")
NAMED = "name: %s\ninput: {channels: 1, length: 8}\nlayers:\n  - {type: flatten}\n"

REFUSED_NUMBERS = {"010": "octal", "-010": "octal", "00": "octal", "0_1": "octal", "1:30": "base-60",
                   "190:20:30": "base-60", "1:30.5": "base-60", "0b11": "string in YAML 1.2",
                   "1_000": "string in YAML 1.2", "1_0.5": "string in YAML 1.2"}
REFUSED_BOOLEANS = ["yes", "Yes", "YES", "no", "No", "on", "On", "ON", "off", "Off", "OFF"]


@pytest.mark.parametrize("text", REFUSED_NUMBERS)
def test_yaml11_numbers_are_refused_with_a_location(text):
    with pytest.raises(SpecError, match=REFUSED_NUMBERS[text]) as info:
        cnncc.load_spec(LAYER % text)
    message = str(info.value)
    assert "<string>:4:29" in message and "hint:" in message


@pytest.mark.parametrize("text", REFUSED_BOOLEANS)
def test_yaml11_booleans_are_refused_with_a_location(text):
    with pytest.raises(SpecError, match=f"'{text}' is the boolean") as info:
        cnncc.load_spec(OPTIMIZER % text)
    assert "<string>:7:49" in str(info.value) and "hint: write" in str(info.value)


@pytest.mark.parametrize("text", REFUSED_BOOLEANS[:4])
def test_a_yaml11_boolean_as_a_name_is_refused_and_quoting_it_works(text):
    with pytest.raises(SpecError, match="quote it"):
        cnncc.load_spec(NAMED % text)
    assert cnncc.load_spec(NAMED % f"'{text}'").name == text


@pytest.mark.parametrize("text, value", [("8", 8), ("0x8", 8), ("+8", 8), ("0", None)])
def test_forms_both_versions_read_alike_are_accepted(text, value):
    if value is None:
        with pytest.raises(SpecError, match="filters"):  # a range error, not a YAML one
            cnncc.load_spec(LAYER % text)
        return
    assert cnncc.load_spec(LAYER % text).layers[0].layer.values()["filters"] == value


def test_true_and_false_stay_booleans():
    for text, value in (("true", True), ("True", True), ("false", False), ("FALSE", False)):
        spec = cnncc.load_spec(OPTIMIZER % text)
        assert spec.optimizer.settings["nesterov"] is value


def test_quoted_forms_are_strings():
    with pytest.raises(SpecError, match="must be an integer, got the string '010'"):
        cnncc.load_spec(LAYER % "'010'")
