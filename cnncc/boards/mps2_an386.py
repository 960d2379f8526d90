"""Arm's MPS2 FPGA board with the AN386 image: a Cortex-M4 with the single-precision FPU, as QEMU
models it (`qemu-system-arm -M mps2-an386`, hw/arm/mps2.c).

QEMU's map: ZBT SSRAM1, 4 MB at 0x00000000, holds the vector table and the image (a real board
boots from it too; here it stands for flash), and ZBT SSRAM2/3, 4 MB at 0x20000000, is the data
RAM. The CMSDK dual timer at 0x40002000 runs at the 25 MHz system clock.
"""
from __future__ import annotations

from .base import Board, Region, Tool

MB = 1024 * 1024
ARM_GCC = "apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi"


class Mps2An386(Board):
    name = "mps2-an386"
    doc = "Arm MPS2 with the AN386 image: Cortex-M4F, 4 MB code SSRAM, 4 MB data SSRAM (QEMU: -M mps2-an386)"
    cpu = "Cortex-M4 with FPv4-SP (single-precision FPU)"
    cflags = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
    flash = Region("FLASH", 0x00000000, 4 * MB, "ZBT SSRAM1")
    ram = Region("RAM", 0x20000000, 4 * MB, "ZBT SSRAM2/3")
    stack_bytes = 64 * 1024
    heap_bytes = 32 * 1024
    qemu = ("qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting-config", "enable=on,target=native")
    timer_hz = 25_000_000
    timer_base = 0x40002000
    compiler = Tool("arm-none-eabi-gcc", ARM_GCC)
    size_tool = Tool("arm-none-eabi-size", ARM_GCC)
    nm_tool = Tool("arm-none-eabi-nm", ARM_GCC)
    emulator = Tool("qemu-system-arm", "apt-get install -y qemu-system-arm")
