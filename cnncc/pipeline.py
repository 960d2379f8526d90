"""The stages composed once: spec -> CheckedNet -> Program -> Report, under one CompileOptions.

    spec.load_spec -> check.check_net -> lowering.lower (kernel plans from the backend)
                   -> memplan.training_layout (frozen layers' tensors share memory) -> report
`analyse` runs them exactly once; the Model keeps the result, so nothing downstream (the
train command, bench, emit) runs the pipeline again, and the report of a build is the report
of exactly the program that build allocates for.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .check import CheckedNet, check_net
from .ir import Program
from .lowering import lower
from .memplan import training_layout
from .options import CompileOptions
from .report import Report, build_report
from .source import without_gc_pauses
from .spec import Spec, load_spec


@dataclass(frozen=True)
class Analysis:
    net: CheckedNet
    program: Program
    report: Report
    options: CompileOptions

    @property
    def spec(self) -> Spec:
        return self.net.spec


def analyse(spec, options: CompileOptions | None = None, batch: int | None = None) -> Analysis:
    """Load (if needed), check, lower and report a spec under `options`."""
    options = options or CompileOptions()
    spec = load_spec(spec)
    if options.dtype is not None and options.dtype != spec.dtype:
        spec = dataclasses.replace(spec, dtype=options.dtype)
    # Every stage is near-linear in the spec's size (benchmarks/check_size_limit.py); the objects
    # they build hold no cycles, so the cycle collector is paused until the report is made.
    with without_gc_pauses():
        net = check_net(spec)
        program = _program(net, options)
        # the report's deployment figures are those of the program `cnncc emit` writes, which may
        # plan some kernels otherwise (within a device's RAM: PlanRequest.for_device)
        emitted = emit_options(options.backend)
        deployed = program if options == emitted else _program(net, emitted)
        return Analysis(net, program, build_report(net, program, batch, deployed), options)


def emit_options(backend: str, for_device: bool = True) -> CompileOptions:
    """The options of the program `cnncc emit` writes for a backend (`--host`: for_device=False)."""
    return CompileOptions(backend=backend, for_device=for_device)


def _program(net: CheckedNet, options: CompileOptions) -> Program:
    return training_layout(lower(net, sample_slots=options.sample_slots, backend=options.backend, fuse=options.fuse,
                                 for_device=options.for_device))


def check(spec, batch: int | None = None, threads: int = 1) -> Report:
    """The report of a spec's shapes, counts and memory (for a build with `threads` threads)."""
    return analyse(spec, CompileOptions(threads=threads), batch).report
