"""`cnncc emit SPEC --int8 Q.npz -o DIR`: the standalone int8 program.

NAME.h and NAME.c are rendered as the Python QuantizedModel's are (render.py), with the portable kernel
set (strict C99; the QuantizedModel plans the host's vector set, which gives the same bits);
NAME_weights.c holds the two blobs as const arrays (flash); main.c quantizes float input and
dequantizes the output at the boundary; the arena is one static array of ARENA_SIZE bytes.
The file is validated completely (qfile.load) before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..check import check_net
from ..codegen import environment
from ..cvalues import c_comment, c_ident
from ..spec import load_spec
from ..version import __version__
from . import qfile
from .graph import QGraph, build_graph
from .layout import Layout, plan_layout
from .render import render_sources
from .scheme import QValues

PER_LINE = 16
EXAMPLE = "main"


def _rows(values) -> list[str]:
    items = [str(int(v)) for v in values.tolist()] or ["0"]
    return [", ".join(items[i:i + PER_LINE]) for i in range(0, len(items), PER_LINE)]


@dataclass(frozen=True)
class Int8Rendered:
    """The model's files of an int8 emit, rendered and not yet written (a board project adds its
    own main.c, startup code and Makefile to them: cnncc/boards/int8.py)."""
    model: str  # the C name
    spec: object  # the loaded Spec
    graph: QGraph
    layout: Layout
    values: QValues
    texts: dict[str, str]  # file name -> text: NAME.h, NAME.c, NAME_weights.c
    context: dict  # what the emit templates read


def render_int8(spec, quantized) -> Int8Rendered:
    """Load and validate the quantized file against the spec (qfile.load), render the model's files."""
    spec = load_spec(spec)
    graph = build_graph(check_net(spec))
    layout = plan_layout(graph)
    values, _ = qfile.load(quantized, spec, graph, layout)
    model = c_ident(graph.name)
    if model == EXAMPLE:
        raise ValueError(f"a model named '{EXAMPLE}' would overwrite the example program {EXAMPLE}.c: rename it")
    sources = render_sources(graph, layout, values, spec.path, with_weights=True)
    context = {"model": model, "version": __version__, "spec_name": c_comment(Path(spec.path).name),
               "weights_name": c_comment(Path(quantized).name), "weight_rows": _rows(values.weights),
               "word_rows": _rows(values.words)}
    texts = {f"{model}.h": sources.header, f"{model}.c": sources.source,
             f"{model}_weights.c": environment("vector").get_template("int8/emit/weights.c.j2").render(context)}
    return Int8Rendered(model, spec, graph, layout, values, texts, context)


def write_texts(texts: dict[str, str], out_dir) -> list[Path]:
    """Write every file (each atomically) into out_dir; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, text in texts.items():
        qfile.write_atomically(out / name, text.encode())
        files.append(out / name)
    return files


def emit_int8(spec, quantized, out_dir) -> tuple[list[Path], Layout]:
    rendered = render_int8(spec, quantized)
    env = environment("vector")
    texts = {**rendered.texts, f"{EXAMPLE}.c": env.get_template("int8/emit/main.c.j2").render(rendered.context),
             "Makefile": env.get_template("int8/emit/Makefile.j2").render(rendered.context)}
    return write_texts(texts, out_dir), rendered.layout


def emit_int8_command(args) -> int:
    files, layout = emit_int8(args.spec, args.int8, args.out)
    print(f"cnncc: wrote {', '.join(p.name for p in files)} to {files[0].parent}")
    print(f"  int8 weights {layout.weight_bytes:,} bytes (flash); int8 arena {layout.arena_bytes:,} bytes (RAM)")
    print(f"  build: make -C {files[0].parent}")
    return 0
