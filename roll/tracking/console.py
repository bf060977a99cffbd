"""Console progress: a live rich progress bar on a terminal, one plain line per step elsewhere.

On a terminal::

    step 12/200 ━━━━━━━━━╺━━━━━━━━━━━━ 0:01:17 reward/mean 0.438 | actor/kl 0.0012 | ...

When the output is a pipe or file (CI, ``roll submit`` logs, tests)::

    step 12/200 | reward/mean 0.438 | actor/kl 0.0012 | time/step 0.41s | perf/tokens_per_s 2310

Only the chosen keys are shown, always in the same order; the full set goes to the other sinks.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

DEFAULT_KEYS = ("reward/mean", "loss/policy", "actor/kl", "time/step", "perf/tokens_per_s")


def format_value(key: str, value: float) -> str:
    """A metric value for humans: ints as ints, ``time/*`` in seconds, large numbers without
    decimals, other floats with 3–4 significant digits (``0.438``, ``0.0012``, ``12.35``)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if key.startswith("time/"):
        return f"{value:.2f}s" if abs(value) < 10 else f"{value:.1f}s"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.4g}"
    return f"{value:.3g}"


def format_metrics(metrics: Mapping[str, float], keys: Sequence[str]) -> str:
    """``key value | key value`` for the ``keys`` present in ``metrics``, in ``keys`` order."""
    return " | ".join(f"{key} {format_value(key, metrics[key])}" for key in keys if key in metrics)


class _MetricsColumn(ProgressColumn):
    """Shows the latest formatted metrics stored in the task's ``metrics`` field."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("metrics", ""), style="cyan")


class ConsoleProgress:
    """A tracking sink that shows training progress on the console.

    Args:
        total_steps: the step count the run ends at.
        start_step: the step a resumed run starts from (0 for a fresh run).
        keys: metric keys to show, in display order.
        stream: where to write (default ``sys.stdout``); a live bar is used only if it is a TTY.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        keys: Sequence[str] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self.keys = tuple(DEFAULT_KEYS if keys is None else keys)
        self.stream = sys.stdout if stream is None else stream
        self.interactive = self.stream.isatty()
        self.last_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self._start_time = time.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self.interactive:
            self._start_bar()

    def _start_bar(self) -> None:
        console = Console(file=self.stream, force_terminal=True)
        self._progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TimeRemainingColumn(),
            _MetricsColumn(),
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task(
            "train", total=self.total_steps, completed=self.start_step, metrics=""
        )
        self._progress.start()

    def line(self, step: int, metrics: Mapping[str, float]) -> str:
        """The plain progress line for one step."""
        shown = format_metrics(metrics, self.keys)
        head = f"step {step}/{self.total_steps}"
        return f"{head} | {shown}" if shown else head

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Advance the bar to ``step`` (or print one line) with the latest metric values."""
        self.last_step = step
        self.last_metrics = dict(metrics)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step, metrics=format_metrics(metrics, self.keys))
        else:
            self._write(self.line(step, metrics))

    def event(
        self, kind: str, message: str, step: int | None = None, data: dict[str, Any] | None = None
    ) -> None:
        """Print an event on its own line (above the bar on a terminal)."""
        where = "" if step is None else f" (step {step})"
        text = f"[{kind}] {message}{where}"
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            self._write(text)

    def summary(self, metrics: Mapping[str, float] | None = None) -> str:
        """The final line: ``done: 200 steps in 95.2s | reward/mean 0.91 | ...``.

        ``metrics`` defaults to the last values logged.
        """
        values = self.last_metrics if metrics is None else metrics
        steps = 0 if self.last_step is None else self.last_step - self.start_step
        elapsed = time.monotonic() - self._start_time
        head = f"done: {steps} steps in {elapsed:.1f}s"
        if self.start_step:
            head += f" (resumed at step {self.start_step})"
        shown = format_metrics(values, self.keys)
        return f"{head} | {shown}" if shown else head

    def close(self) -> None:
        """Stop the live bar, leaving its last state on screen (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
