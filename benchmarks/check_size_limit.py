"""`cnncc check` on specs at the 256 KiB size limit: the time of each stage (parse, check,
lower, memory plan, report, render) for the largest specs a user can write. Not a timed test;
run it by hand: `python benchmarks/check_size_limit.py` (goal: every spec under 2 s in total).

Four shapes fill the limit: a chain of small layers (the most layers), a chain with residual
skips, one whose adds all read the input, and a tree of adds (half its tensors live together:
the memory plan's worst case)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnncc.check import check_net  # noqa: E402
from cnncc.codegen import render  # noqa: E402
from cnncc.lowering import lower  # noqa: E402
from cnncc.memplan import plan  # noqa: E402
from cnncc.pipeline import check  # noqa: E402
from cnncc.report import build_report  # noqa: E402
from cnncc.source import MAX_SPEC_BYTES  # noqa: E402
from cnncc.spec import load_spec  # noqa: E402

HEADER = "name: big\ninput: {channels: 2, length: 8}\nloss: mse\nlayers:\n"


def _fill(unit) -> str:
    """HEADER plus as many units (a function of their index) as fit under the limit."""
    parts, size, k = [HEADER], len(HEADER), 0
    while True:
        text = unit(k)
        if size + len(text) + 64 > MAX_SPEC_BYTES:
            return "".join(parts) + "  - {type: flatten}\n"
        parts.append(text)
        size += len(text)
        k += 1


def chain(k: int) -> str:
    return "  - {type: relu}\n"


def residual(k: int) -> str:
    return f"  - {{name: a{k}, type: relu}}\n  - {{type: add, inputs: [a{k}, {'input' if k == 0 else f'a{k - 1}'}]}}\n"


def skip_to_input(k: int) -> str:
    return f"  - {{name: s{k}, type: add, inputs: [input, {'input' if k == 0 else f's{k - 1}'}]}}\n"


def add_tree() -> str:
    """Leaves read off the input, then summed pairwise level by level: half the tensors are live
    together at the first sum, the memory plan's worst case (it was cubic in the leaves)."""
    def text(leaves: int) -> str:
        lines = [f"  - {{name: r{k}, type: relu, inputs: [input]}}\n" for k in range(leaves)]
        names, made = [f"r{k}" for k in range(leaves)], 0
        while len(names) > 1:
            pairs = [names[i:i + 2] for i in range(0, len(names), 2)]
            names = []
            for pair in pairs:
                if len(pair) == 1:
                    names.append(pair[0])
                    continue
                lines.append(f"  - {{name: s{made}, type: add, inputs: [{pair[0]}, {pair[1]}]}}\n")
                names.append(f"s{made}")
                made += 1
        return HEADER + "".join(lines) + "  - {type: flatten}\n"

    leaves = 64
    while len(text(leaves * 2)) <= MAX_SPEC_BYTES:
        leaves *= 2
    low, high = leaves, leaves * 2  # the most leaves that fit, by bisection
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if len(text(middle)) <= MAX_SPEC_BYTES else (low, middle)
    return text(low)


def measure(name: str, text: str) -> float:
    """Each stage's time, and the whole of `cnncc check` (pipeline.check: parse to report)."""
    start = time.perf_counter()
    check(text)
    whole = time.perf_counter() - start
    times = {}
    start = time.perf_counter()
    spec = load_spec(text)
    times["parse"] = time.perf_counter() - start
    t = time.perf_counter()
    net = check_net(spec)
    times["check"] = time.perf_counter() - t
    t = time.perf_counter()
    program = lower(net)
    times["lower"] = time.perf_counter() - t
    t = time.perf_counter()
    plan(program)
    times["memplan"] = time.perf_counter() - t
    t = time.perf_counter()
    build_report(net, program, 1).to_text()
    times["report"] = time.perf_counter() - t
    t = time.perf_counter()
    render(program, "<bench>")
    times["render"] = time.perf_counter() - t
    stages = "  ".join(f"{k} {v:.2f}" for k, v in times.items())
    print(f"{name:<14} {len(text):>7,} bytes {len(spec.layers):>6,} layers  {stages}  `cnncc check` {whole:.2f} s")
    return whole


if __name__ == "__main__":
    worst = max([*(measure(name, _fill(unit)) for name, unit in
                   (("chain", chain), ("residual", residual), ("skip_to_input", skip_to_input))),
                 measure("add_tree", add_tree())])
    print(f"slowest `cnncc check`: {worst:.2f} s (goal: under 2 s)")
