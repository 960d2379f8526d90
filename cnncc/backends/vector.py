"""The vector backend: GNU C vector extensions sized to the target's widest vectors (AVX-512,
AVX, or 16 bytes), register-blocked matrix products, OpenMP sample slots. The default for the
Python module: it is the fastest on the machines cnncc runs on. Its templates are the shared
ones under templates/."""
from __future__ import annotations

from .base import Backend


class VectorBackend(Backend):
    name = "vector"
    doc = "GNU C vector kernels (GCC or Clang), tuned to the build machine's vector width"
