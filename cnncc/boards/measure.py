"""Build a board project, run it under QEMU, and measure it: the ELF's sections and symbols
(arm-none-eabi-size, -nm) and what the program prints (each call's timer ticks, the stack's
high-water mark). The tests, `cnncc emit --board --build` and benchmarks/board.py use these."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .base import Board, Tool

FLASH_SECTIONS = (".text", ".rodata", ".ARM.extab", ".ARM.exidx", ".init_array")
RAM_SECTIONS = (".data", ".bss")


def require(tool: Tool) -> str:
    """The tool's path, or a RuntimeError saying what to install."""
    path = shutil.which(tool.command)
    if path is None:
        raise RuntimeError(tool.missing())
    return path


def build(directory: Path, board: Board, jobs: int = 1) -> Path:
    """make in the project; the ELF, or a RuntimeError with the compiler's output."""
    require(board.compiler)
    result = subprocess.run(["make", "-C", str(directory), f"-j{jobs}", "main.elf"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {directory} failed:\n{result.stdout}{result.stderr}")
    return Path(directory) / "main.elf"


def section_sizes(elf: Path, board: Board) -> dict[str, int]:
    """Bytes of every allocated section (arm-none-eabi-size -A)."""
    tool = require(board.size_tool)
    text = subprocess.run([tool, "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0].startswith(".") and fields[1].isdigit():
            sizes[fields[0]] = int(fields[1])
    return sizes


def symbol_sizes(elf: Path, board: Board) -> dict[str, int]:
    """Bytes of every sized symbol of the ELF (arm-none-eabi-nm -S)."""
    nm = require(board.nm_tool)
    out = subprocess.run([nm, "-S", "--defined-only", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4:
            sizes[fields[3]] = int(fields[1], 16)
    return sizes


def object_text(obj: Path, board: Board) -> int:
    """Code bytes of one object file (its .text sections, before the link drops unused ones)."""
    tool = require(board.size_tool)
    out = subprocess.run([tool, "-A", str(obj)], capture_output=True, text=True, check=True).stdout
    return sum(int(f[1]) for f in (line.split() for line in out.splitlines())
               if len(f) == 3 and f[0].startswith(".text") and f[1].isdigit())


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def stack_used(self) -> int:
        return int(re.search(r"^stack: (\d+) of \d+ bytes used$", self.stdout, re.M).group(1))

    @property
    def ticks(self) -> list[int]:
        """The timer ticks of each forward call or training step, in order."""
        return [int(t) for t in re.findall(r"(\d+) timer ticks$", self.stdout, re.M)]

    @property
    def losses(self) -> list[float]:
        return [float(x) for x in re.findall(r"^step \d+: loss (\S+),", self.stdout, re.M)]


def run(directory: Path, board: Board, count_instructions: bool = False, timeout: float = 600) -> Run:
    """Run the built main.elf under QEMU in its directory (where it reads and writes its files)."""
    require(board.emulator)
    command = board.qemu_command("main.elf", count_instructions)
    try:
        result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(command)} did not finish within {timeout:.0f} s") from None
    return Run(result.returncode, result.stdout, result.stderr)


def _check(result: Run, what: str) -> Run:
    if result.returncode != 0:
        raise RuntimeError(f"{what} on the device failed (QEMU exit status {result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result


def infer_on_device(project, x, count_instructions: bool = False, params=None, timeout: float = 600):
    """(outputs, Run): run the built inference project on x [N, *input] (N a multiple of its batch);
    params: the flat parameters, for a project that reads them from weights.bin."""
    import numpy as np

    program, files = project.program, project.files
    dtype = np.dtype(program.dtype)
    directory = Path(project.directory)
    np.ascontiguousarray(x, dtype).tofile(directory / files["input"])
    if params is not None:
        np.ascontiguousarray(params, dtype).tofile(directory / files["weights"])
    result = _check(run(directory, project.board, count_instructions, timeout), "inference")
    outputs = np.fromfile(directory / files["output"], dtype)
    return outputs.reshape((len(x), *program.output.shape)), result


def train_on_device(project, x, y, params=None, timeout: float = 600):
    """(trained flat parameters, Run): one step per batch of (x, y) inside the emulator, from params
    (or the compiled-in weights)."""
    import numpy as np

    program, files = project.program, project.files
    dtype = np.dtype(program.dtype)
    directory = Path(project.directory)
    np.ascontiguousarray(x, dtype).tofile(directory / files["input"])
    target_dtype = np.int32 if program.loss.takes_labels else dtype
    np.ascontiguousarray(y, target_dtype).tofile(directory / files["targets"])
    if params is not None:
        np.ascontiguousarray(params, dtype).tofile(directory / files["weights"])
    result = _check(run(directory, project.board, timeout=timeout), "training")
    return np.fromfile(directory / files["params"], dtype), result
