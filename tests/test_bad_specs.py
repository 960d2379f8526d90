"""The malformed-spec corpus (tests/bad_specs/): every file is rejected with exactly the
diagnostics of tests/bad_specs/expected.yaml, through the API and through `cnncc check`,
quickly, and without ever constructing anything from a YAML tag.

Some specs are generated at test time instead of committed: a 10 MB file, bytes that are
not UTF-8, a control character, an alias bomb and a 10,000-deep list.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import cnncc
from cnncc import SpecError
from cnncc.check import check_net
from cnncc.source import MAX_DEPTH, MAX_NODES, MAX_SPEC_BYTES

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "bad_specs"
EXPECTED = yaml.safe_load((BAD / "expected.yaml").read_text(encoding="utf-8"))
CORPUS = sorted(path.name for path in BAD.glob("*.yaml") if path.name != "expected.yaml")
TIME_LIMIT = 5.0  # seconds per case, generated monsters included

# A sample run through the command line (a subprocess each: kept small to stay fast).
CLI_SAMPLE = [
    "02_yaml_unclosed_bracket.yaml", "04_empty.yaml", "16_unknown_layer_type_typo.yaml",
    "34_huge_params.yaml", "36_kernel_larger_than_input.yaml", "57_loss_on_image_output.yaml",
    "72_tag_python_object.yaml", "89_injection_layer_name_newline.yaml", "94_injection_key.yaml",
    "96_several_spec_errors.yaml", "97_several_shape_errors.yaml",
]


# ---- helpers ------------------------------------------------------------------------------
def rejection(source) -> SpecError:
    """Load and check `source`; it must be rejected, within the time limit."""
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        check_net(cnncc.load_spec(source))
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT, f"took {elapsed:.2f} s"
    return info.value


def where(diagnostic) -> tuple[int | None, int | None]:
    return (diagnostic.loc.line, diagnostic.loc.col) if diagnostic.loc else (None, None)


def assert_diagnostics(exc: SpecError, expected: list, path: str) -> None:
    """Exactly the expected diagnostics, in order; each formatted as one clean line."""
    got = [(*where(d), f"{d.layer}: {d.message}" if d.layer else d.message, d.hint) for d in exc.diagnostics]
    listing = "\n".join(f"  {g}" for g in got)
    assert len(got) == len(expected), f"expected {len(expected)} diagnostics, got:\n{listing}"
    for (line, col, text, hint), (want_line, want_col, want_text, *want_hint) in zip(got, expected):
        assert (line, col) == (want_line, want_col), f"{want_text!r} at {line}:{col}, got:\n{listing}"
        assert want_text in text, f"{want_text!r} not in {text!r}"
        if want_hint:
            assert hint is not None and want_hint[0] in hint, f"hint {want_hint[0]!r} not in {hint!r}"
    assert exc.path == path
    report = str(exc)
    assert report == exc.format()
    for d in exc.diagnostics:
        prefix = f"{path}:{d.loc.line}:{d.loc.col}: error: " if d.loc else f"{path}: error: "
        assert prefix in report
        # One printable line each: nothing from the spec (a newline, an escape) forges output.
        assert d.message.isprintable() and (d.hint is None or d.hint.isprintable()), repr(d)
    assert len(report.splitlines()) == len(exc.diagnostics) + sum(1 for d in exc.diagnostics if d.hint)


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "cnncc", *args], capture_output=True, text=True,
                            timeout=60, cwd=cwd or ROOT, env=env)
    assert time.perf_counter() - start < TIME_LIMIT  # the interpreter's start-up included
    return result


def assert_cli_rejects(path: Path, expected: list) -> None:
    result = run_cli("check", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout == ""
    for line, col, *_ in expected:
        prefix = f"{path}:{line}:{col}: error: " if line is not None else f"{path}: error: "
        assert prefix in result.stderr, result.stderr
    lines = result.stderr.splitlines()  # a diagnostic per line, each maybe with a hint line
    assert sum(line.startswith(f"{path}:") for line in lines) == len(expected), result.stderr
    assert all(line.startswith((f"{path}:", "    hint: ")) for line in lines), result.stderr


# ---- the committed corpus -----------------------------------------------------------------
def test_corpus_and_manifest_agree():
    assert len(CORPUS) >= 60
    assert set(CORPUS) == set(EXPECTED), set(CORPUS) ^ set(EXPECTED)
    for name in CORPUS:
        assert re.fullmatch(r"\d{2,3}_[a-z0-9_]+\.yaml", name), name  # 00-99 are taken
    for name, diagnostics in EXPECTED.items():
        assert diagnostics, name
        for entry in diagnostics:
            assert len(entry) in (3, 4) and isinstance(entry[2], str), (name, entry)


@pytest.mark.parametrize("name", CORPUS)
def test_bad_spec(name):
    path = BAD / name
    assert_diagnostics(rejection(str(path)), EXPECTED[name], str(path))


@pytest.mark.parametrize("name", CORPUS)
def test_bad_spec_same_from_text_and_public_check(name):
    """The text itself (not a path) and the public cnncc.check give the same diagnostics."""
    path = BAD / name
    from_path = rejection(path)  # a pathlib.Path
    from_text = rejection(path.read_text(encoding="utf-8"))
    assert from_text.path == "<string>"
    assert from_text.diagnostics == from_path.diagnostics
    with pytest.raises(SpecError) as info:
        cnncc.check(path)
    assert info.value.diagnostics == from_path.diagnostics


@pytest.mark.parametrize("name", CLI_SAMPLE)
def test_bad_spec_cli(name):
    assert_cli_rejects(BAD / name, EXPECTED[name])


def test_dict_spec_errors_have_no_location():
    """A spec given as a dict is validated the same way; its diagnostics have no line:col."""
    exc = rejection({"name": "net", "input": {"channels": 1, "height": 4, "width": 4},
                     "layers": [{"type": "conv2d", "filters": 8, "kernel": 3, "filtres": 2}]})
    assert_diagnostics(exc, [[None, None, "layer 1 (conv2d): unknown key 'filtres'", "did you mean 'filters'?"]],
                       "<dict>")
    exc = rejection({"name": "net", "input": {"channels": 1, "height": 4, "width": 4},
                     "layers": [{"name": "conv1", "type": "conv2d", "filters": 8, "kernel": 5}]})
    assert_diagnostics(exc, [[None, None, "layer 1 'conv1' (conv2d): kernel 5x5 is larger than its padded "
                                          "input 4x4"]], "<dict>")
    with pytest.raises(SpecError):
        cnncc.load_spec({"name": "net", "input": {"channels": 1, "length": 4}, "layers": [{"type": object()}]})


# ---- generated monsters -------------------------------------------------------------------
HEADER = "name: net\ninput: {channels: 1, height: 28, width: 28}\nlayers:\n  - {type: flatten}\n"


def _bomb(levels: int = 9) -> str:
    """Billion laughs: level k is a list of 10 aliases of level k-1 (10**9 strings in the end)."""
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        lines.append(f"lol{k}: &lol{k} [" + ", ".join([f"*lol{k - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def _many_layers_at_the_limit() -> tuple[str, int]:
    """The most YAML a spec may be: small layers up to just under the size limit, the last one
    wrong (so the whole file is parsed, then refused at its last line). Returns (text, that line)."""
    relu, last = "  - {type: relu}\n", "  - {type: transformer}\n"
    count = (MAX_SPEC_BYTES - len(HEADER) - len(last)) // len(relu)
    return HEADER + relu * count + last, HEADER.count("\n") + count + 1


MANY_LAYERS, MANY_LAYERS_LAST_LINE = _many_layers_at_the_limit()

GENERATED = {
    # name: (content, expected diagnostics)
    "many_layers_at_the_limit.yaml": (MANY_LAYERS, [[MANY_LAYERS_LAST_LINE, 12, "unknown layer type 'transformer'"]]),
    "huge_10mb.yaml": (HEADER + "comment: '" + "x" * (10 << 20) + "'\n",
                       [[1, 1, f"spec is larger than the limit of {MAX_SPEC_BYTES} bytes"]]),
    "not_utf8.yaml": ("# latin-1, not UTF-8\n" + HEADER.replace("{type: flatten}", "{name: caf\xe9, type: flatten}"),
                      [[5, 15, "spec is not valid UTF-8 (byte 0xe9)"]]),
    "control_character.yaml": (HEADER.replace("name: net", "name: net\x1b[2J"),
                               [[1, 10, "YAML syntax: character U+001B is not allowed in YAML"]]),
    # located at the anchored node being expanded when the budget runs out (the last "lol")
    "alias_bomb.yaml": (_bomb(), [[1, 77, f"spec expands to more than {MAX_NODES} YAML nodes (an alias bomb?)"]]),
    "deep_list.yaml": ("name: net\ndeep: " + "[" * 10_000 + "]" * 10_000 + "\n",
                       [[2, 7 + MAX_DEPTH, f"spec is nested too deeply (the limit is {MAX_DEPTH} levels)"]]),
    "deep_block_list.yaml": ("name: net\ndeep:\n" + "".join(" " * k + "- \n" for k in range(600)),
                             [[3 + MAX_DEPTH, MAX_DEPTH + 1, "spec is nested too deeply"]]),
    "deep_mapping.yaml": ("name: net\ndeep: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
                          [[2, 7 + 4 * MAX_DEPTH, "spec is nested too deeply"]]),
}


def _write(tmp_path: Path, name: str) -> Path:
    content, _ = GENERATED[name]
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1") if name == "not_utf8.yaml" else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_bad_spec(tmp_path, name):
    path = _write(tmp_path, name)
    expected = GENERATED[name][1]
    assert_diagnostics(rejection(str(path)), expected, str(path))
    if name != "not_utf8.yaml":  # the same text, given as a string
        start = time.perf_counter()
        with pytest.raises(SpecError) as info:
            cnncc.load_spec(GENERATED[name][0])
        assert time.perf_counter() - start < TIME_LIMIT
        assert [where(d) for d in info.value.diagnostics] == [tuple(e[:2]) for e in expected]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_bad_spec_cli(tmp_path, name):
    assert_cli_rejects(_write(tmp_path, name), GENERATED[name][1])


def test_generated_sizes():
    assert len(GENERATED["huge_10mb.yaml"][0]) > 10 << 20
    assert GENERATED["deep_list.yaml"][0].count("[") == 10_000
    assert _bomb().count("*lol") == 80  # 8 levels of 10 aliases over the 10 strings of level 0


# ---- YAML tags never construct anything ---------------------------------------------------
def _tag_specs(marker: Path) -> list[tuple[str, tuple[int, int]]]:
    command = f'touch {marker}'
    return [
        (f'name: !!python/object/apply:os.system ["{command}"]\n', (1, 7)),
        (f'name: net\ninput: !!python/object/apply:subprocess.call [["touch", "{marker}"]]\n', (2, 8)),
        (f'name: !!python/object/new:os.system ["{command}"]\n', (1, 7)),
        (f'name: !!python/object/apply:os.system\n  args: ["{command}"]\n', (1, 7)),
        ('name: !!python/name:os.system ""\n', (1, 7)),
        (f'? !!python/object/apply:os.system ["{command}"]\n: 1\n', (1, 3)),
        (f'name: net\nlayers:\n  - {{type: flatten, units: !!python/object/apply:os.system ["{command}"]}}\n',
         (3, 28)),
    ]


def test_yaml_tags_do_not_construct(tmp_path):
    marker = tmp_path / "MARKER"
    for text, loc in _tag_specs(marker):
        exc = rejection(text)
        assert [where(d) for d in exc.diagnostics] == [loc], (text, exc.format())
        assert "YAML tag" in exc.diagnostics[0].message or "mapping keys must be plain strings" in \
            exc.diagnostics[0].message
        assert not marker.exists(), f"a YAML tag ran a command: {text!r}"


def test_yaml_tags_do_not_construct_cli(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "tag.yaml"
    path.write_text(_tag_specs(marker)[0][0], encoding="utf-8")
    assert_cli_rejects(path, [[1, 7, "YAML tag"]])
    assert not marker.exists()
