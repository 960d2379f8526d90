"""What `fit` prints while it trains.

On a terminal, a tqdm bar per epoch: samples done, images/s, ETA, and the running loss and
accuracy. Anywhere else (a log file, CI), one line per epoch, as Keras's verbose=2 does, so
logs stay readable. tqdm because it is small, pure Python with no dependencies of its own,
long and actively maintained, and does the terminal handling (width, redraw rate, ETA)
this module used to do by hand.
"""
from __future__ import annotations

import sys

VERBOSITY = (0, 1, 2)  # 0 silent; 1 a bar on a terminal, lines otherwise; 2 lines always


class Progress:
    def __init__(self, verbose: int, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = verbose > 0
        self.live = verbose == 1 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = None
        self._prefix = ""

    def start_epoch(self, epoch: int, epochs: int, total: int) -> None:
        self._prefix = f"epoch {epoch}/{epochs}"
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self._prefix, unit="img", unit_scale=True, file=self.stream,
                             leave=True, dynamic_ncols=True, mininterval=0.1)

    def batch(self, done: int, loss: float, accuracy: float | None) -> None:
        if self._bar is None:
            return
        self._bar.update(done - self._bar.n)
        postfix = {"loss": f"{loss:.4f}"}
        if accuracy is not None:
            postfix["acc"] = f"{100 * accuracy:.1f}%"
        self._bar.set_postfix(postfix, refresh=False)

    def end_epoch(self, row: dict) -> None:
        """The epoch's summary: closes the bar on a terminal, one line otherwise; validation after."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            line = "  " + _validation_text(row) if row["val_loss"] is not None else ""
        else:
            acc = f", accuracy {100 * row['accuracy']:.2f}%" if row["accuracy"] is not None else ""
            val = f"; {_validation_text(row)}" if row["val_loss"] is not None else ""
            line = (f"{self._prefix} - loss {row['loss']:.4f}{acc}{val}; lr {row['lr']:.3g}, "
                    f"{row['seconds']:.1f}s, {row['images_per_second']:,.0f} img/s")
        if line:
            print(line, file=self.stream, flush=True)


def _validation_text(row: dict) -> str:
    acc = f", val_accuracy {100 * row['val_accuracy']:.2f}%" if row["val_accuracy"] is not None else ""
    return f"val_loss {row['val_loss']:.4f}{acc}"
