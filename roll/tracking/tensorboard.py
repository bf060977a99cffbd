"""A sink that writes TensorBoard event files (``tensorboard --logdir <logdir>`` to view)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class TensorBoardSink:
    """One scalar per metric key (``reward/mean`` shows under the ``reward`` section), events as
    text under ``events/<kind>``. Flushes after every step so a live TensorBoard sees it.

    Args:
        logdir: folder for the event files (created if missing).
    """

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(log_dir=str(self.logdir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Add every metric as a scalar at ``step`` and flush."""
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def event(
        self, kind: str, message: str, step: int | None = None, data: dict[str, Any] | None = None
    ) -> None:
        """Record an event as text (with its data as JSON) under ``events/<kind>``."""
        text = message if data is None else f"{message}\n\n    {json.dumps(data, default=str)}"
        self.writer.add_text(f"events/{kind}", text, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
