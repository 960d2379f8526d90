"""Every board `cnncc emit --board` knows, registered by importing its module."""
from . import mps2_an386  # noqa: F401  (registration)
from .base import BOARDS, Board


def board(name: str) -> Board:
    """The board of that name, or a ValueError naming the boards there are."""
    if name not in BOARDS:
        raise ValueError(f"unknown board '{name}': the boards are {', '.join(sorted(BOARDS))}")
    return BOARDS[name]()


__all__ = ["BOARDS", "Board", "board"]
