"""How far each int8 tensor is from its float value: RMSE, max abs error and SQNR (dB) of the
dequantized int8 tensor against the float model's, accumulated over batches."""
from __future__ import annotations

import math

import numpy as np


class ErrorStats:
    def __init__(self):
        self.count = 0
        self.squared = 0.0  # sum of squared errors
        self.signal = 0.0  # sum of squared float values
        self.max_abs = 0.0

    def add(self, reference: np.ndarray, approximation: np.ndarray) -> None:
        diff = approximation.astype(np.float64) - reference.astype(np.float64)
        self.count += diff.size
        self.squared += float(np.sum(diff * diff))
        self.signal += float(np.sum(reference.astype(np.float64) ** 2))
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()) if diff.size else 0.0)

    def figures(self) -> dict[str, float]:
        rmse = math.sqrt(self.squared / self.count) if self.count else 0.0
        if self.squared == 0:
            sqnr = math.inf if self.signal > 0 else 0.0
        elif self.signal == 0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self.signal / self.squared)
        return {"rmse": rmse, "max_abs": self.max_abs, "sqnr_db": sqnr}
