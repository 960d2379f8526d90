"""The C ABI of an int8 model, declared once (as cnncc/abi.py does for float models).

templates/int8/model.h.j2 renders the header from these declarations, `cdef` gives cffi the
same ones, and `Bindings` is the only place Python looks the functions up.
Placeholders: {model} (the model's C name).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..cvalues import c_comment, c_ident, c_int


@dataclass(frozen=True)
class EntryPoint:
    suffix: str
    returns: str
    args: tuple[str, ...]
    doc: str


BLOBS = ("const int8_t * weights", "const int32_t * words")
ENTRY_POINTS = (
    EntryPoint("forward", "void", ("int8_t * arena", *BLOBS),
               "One sample: reads the int8 input at arena + {MODEL}_INPUT_OFFSET and leaves the int8 output at "
               "arena + {MODEL}_OUTPUT_OFFSET. arena: {MODEL}_ARENA_SIZE bytes; weights and words: the "
               "{MODEL}_WEIGHTS_SIZE int8 and {MODEL}_WORDS_SIZE int32 constants (flash)."),
    EntryPoint("run", "void", ("int8_t * output", "const int8_t * input", "size_t batch", "int8_t * arena", *BLOBS),
               "forward on each of batch samples: input [batch, {MODEL}_INPUT_SIZE] -> output "
               "[batch, {MODEL}_OUTPUT_SIZE], both int8."),
    EntryPoint("quantize_input", "void", ("int8_t * q", "const float * x", "size_t count", "const float * threshold"),
               "q = clamp(round(x / {MODEL}_INPUT_SCALE) + {MODEL}_INPUT_ZERO_POINT, -128, 127) of count finite "
               "float32 values, the division in double rounded half away from zero. The emitted C computes it "
               "exactly with float32 arithmetic: threshold holds the 255 least float32 values reaching -127 .. 127 "
               "(the model's cnncc.quantize.boundary.input_thresholds). The host's vector build divides in double "
               "and does not read threshold."),
    EntryPoint("dequantize_output", "void", ("float * y", "const int8_t * q", "size_t count", "const float * level"),
               "y = level[q + 128] of count int8 values: level holds the 256 float32 values "
               "{MODEL}_OUTPUT_SCALE * (q - {MODEL}_OUTPUT_ZERO_POINT), computed in double."),
    EntryPoint("predict", "void", ("float * output", "const float * input", "size_t batch", "int8_t * arena", *BLOBS,
                                   "const float * threshold", "const float * level"),
               "run on float32 samples: each sample quantized (quantize_input), its forward, its output "
               "dequantized (dequantize_output): input [batch, {MODEL}_INPUT_SIZE] finite float32 -> output "
               "[batch, {MODEL}_OUTPUT_SIZE] float32."),
    EntryPoint("all_finite", "int", ("const float * values", "size_t count"),
               "1 if every one of values[0:count] is a finite float32, else 0 (a NaN or an infinity): what "
               "predict's input must be."),
)


def _fill(text: str, name: str) -> str:
    return text.format(model=c_ident(name), MODEL=c_ident(name).upper())


def declaration(entry: EntryPoint, name: str) -> str:
    args = ", ".join(_fill(arg, name).replace("* ", "*") for arg in entry.args)
    return f"{entry.returns} {c_ident(name)}_{entry.suffix}({args})"


def documentation(entry: EntryPoint, name: str) -> str:
    return c_comment(_fill(entry.doc, name))


def int_macros(graph, layout) -> list[tuple[str, int, str]]:
    """(name, value, comment) of the header's integer macros (cffi reads them too)."""
    upper = c_ident(graph.name).upper()
    macros = [("INPUT_SIZE", graph.tensors[graph.input].size, "int8 values per input sample"),
              ("OUTPUT_SIZE", graph.tensors[graph.output].size, "int8 values per output sample"),
              ("INPUT_OFFSET", layout.tensor_offsets[graph.input], "where forward reads the input"),
              ("OUTPUT_OFFSET", layout.tensor_offsets[graph.output], "where forward leaves the output"),
              ("ARENA_SIZE", max(1, layout.arena_bytes),
               "bytes: the planned activations, then the conv kernels' scratch"),
              ("WEIGHTS_SIZE", max(1, layout.weight_count), "int8 weights and tables"),
              ("WORDS_SIZE", max(1, layout.word_count), "int32 biases, multipliers and shifts")]
    return [(f"{upper}_{name}", int(c_int(value)), comment) for name, value, comment in macros]


def cdef(graph, layout) -> str:
    lines = [f"#define {name} {value}" for name, value, _ in int_macros(graph, layout)]
    lines += [declaration(entry, graph.name) + ";" for entry in ENTRY_POINTS]
    return "\n".join(lines) + "\n"


class Bindings:
    """The entry points of a loaded int8 module as attributes."""

    def __init__(self, lib, name: str):
        for entry in ENTRY_POINTS:
            setattr(self, entry.suffix, getattr(lib, f"{c_ident(name)}_{entry.suffix}"))
