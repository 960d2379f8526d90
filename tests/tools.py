"""Tests that need an outside tool (a cross-compiler, QEMU, MPI, tcc, clang, onnxruntime, torch).

Locally such a test skips when its tool is absent. CI sets CNNCC_REQUIRE_TOOLS=1 (.ci/run), which
turns that skip into a failure: a tool CI was meant to install and did not is an error, never a
silent pass.
"""
from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

REQUIRED = os.environ.get("CNNCC_REQUIRE_TOOLS") == "1"


def _missing(what: str, install: str) -> None:
    message = f"{what} is not available (install: {install})"
    if REQUIRED:
        pytest.fail(f"CNNCC_REQUIRE_TOOLS=1 but {message}", pytrace=False)
    pytest.skip(message)


def need_command(command: str, install: str) -> str:
    """The path of `command`, or skip (fail under CNNCC_REQUIRE_TOOLS=1)."""
    path = shutil.which(command)
    if path is None:
        _missing(f"the command '{command}'", install)
    return path


def need_module(module: str, install: str):
    """The imported Python module, or skip (fail under CNNCC_REQUIRE_TOOLS=1)."""
    if importlib.util.find_spec(module) is None:
        _missing(f"the Python module '{module}'", install)
    return importlib.import_module(module)
