"""The board seam: what `cnncc emit --board NAME` needs to know about one microcontroller board.

A board is a class here (registered by its `name`) and a template folder, templates/boards/<name>/,
holding its startup code, linker script, main.c and Makefile. The class gives the templates every
number they print (the memory map, the CPU flags, the stack and heap reserves, the QEMU machine), so
the templates decide nothing; project.py checks a model against the map before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

BOARDS: dict[str, type["Board"]] = {}


@dataclass(frozen=True)
class Region:
    name: str  # the linker script's MEMORY name
    origin: int
    length: int  # bytes
    doc: str  # what the board calls it


@dataclass(frozen=True)
class Tool:
    command: str
    install: str  # how to get it, for the error message and the tests' skip

    def missing(self) -> str:
        return f"'{self.command}' is not installed (install it with: {self.install})"


class Board:
    name: ClassVar[str]
    doc: ClassVar[str]
    cpu: ClassVar[str]  # the core, for the README
    cflags: ClassVar[tuple[str, ...]]  # the target flags (compile and link)
    flash: ClassVar[Region]  # code and const data: .text, .rodata (the weights), .data's initial values
    ram: ClassVar[Region]  # .data, .bss (every buffer), the heap, the stack
    stack_bytes: ClassVar[int]  # reserved at the top of RAM and painted at reset to measure its use
    heap_bytes: ClassVar[int]  # at least this much between .bss and the stack: newlib's stdio buffers
    qemu: ClassVar[tuple[str, ...]]  # the emulator command, before -kernel ELF
    timer_hz: ClassVar[int]  # the free-running timer main.c reads around each call
    timer_base: ClassVar[int]  # that timer's registers: load, value, control
    compiler: ClassVar[Tool]
    size_tool: ClassVar[Tool]  # section sizes of the ELF
    nm_tool: ClassVar[Tool]  # symbol sizes of the ELF
    emulator: ClassVar[Tool]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            BOARDS[cls.name] = cls

    @property
    def template_folder(self) -> str:
        return f"boards/{self.name}"

    def qemu_command(self, elf: str, count_instructions: bool = False) -> list[str]:
        """The command that runs an ELF; with count_instructions, QEMU's virtual clock advances one
        nanosecond per executed instruction (-icount shift=0), so the timer counts instructions."""
        return [*self.qemu, *(["-icount", "shift=0"] if count_instructions else []), "-kernel", elf]

    def instructions_per_tick(self) -> int:
        """Instructions per timer tick under -icount shift=0 (1 ns per instruction)."""
        ns_per_tick = 1_000_000_000 // self.timer_hz
        assert ns_per_tick * self.timer_hz == 1_000_000_000, "the timer's period must be whole nanoseconds"
        return ns_per_tick

    def timer_registers(self) -> dict[str, str]:
        """The timer's register addresses as C hexadecimal text (what startup.c reads and writes)."""
        return {name: f"0x{self.timer_base + offset:08X}" for name, offset in
                (("load", 0x0), ("value", 0x4), ("control", 0x8))}

    def memory_map_hex(self) -> dict[str, str]:
        """The flash and RAM regions' origins and lengths as C hexadecimal text (what link.ld prints)."""
        return {f"{region}_{what}": f"0x{getattr(getattr(self, region), what):08X}"
                for region in ("flash", "ram") for what in ("origin", "length")}
