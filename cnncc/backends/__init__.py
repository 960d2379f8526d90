"""Every backend, registered by importing its module."""
from . import portable, vector  # noqa: F401  (registration)
from .base import BACKENDS, Backend


def backend(name: str) -> Backend:
    return BACKENDS[name]()


__all__ = ["BACKENDS", "Backend", "backend"]
