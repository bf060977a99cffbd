"""Metric sinks behind one small protocol: console progress, run store, TensorBoard.

Usage::

    tracker = Tracker([ConsoleProgress(total_steps=200), RunStoreSink(store, run_id),
                       TensorBoardSink(run_dir / "tb")])
    tracker.log(step, {"reward/mean": 0.43, "actor/kl": 0.0012})
    tracker.close()
"""

from roll.tracking.console import ConsoleProgress
from roll.tracking.store_sink import RunStoreSink
from roll.tracking.tensorboard import TensorBoardSink
from roll.tracking.tracker import EventSink, Sink, Tracker

__all__ = ["ConsoleProgress", "EventSink", "RunStoreSink", "Sink", "TensorBoardSink", "Tracker"]
