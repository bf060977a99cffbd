"""Metric sinks: tracker fan-out and failure isolation, TensorBoard files, console lines."""

from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from roll.errors import StateError
from roll.jobs.runstore import RunStore
from roll.tracking import ConsoleProgress, RunStoreSink, Sink, TensorBoardSink, Tracker
from roll.tracking.console import format_value


class ListSink:
    """Records what it receives."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.events: list[tuple] = []
        self.closed = False

    def log(self, step, metrics):
        self.logged.append((step, metrics))

    def event(self, kind, message, step=None, data=None):
        self.events.append((kind, message, step, data))

    def close(self):
        self.closed = True


class MetricsOnlySink:
    def __init__(self) -> None:
        self.logged = []

    def log(self, step, metrics):
        self.logged.append(step)

    def close(self):
        pass


class BrokenSink:
    def __init__(self) -> None:
        self.calls = 0

    def log(self, step, metrics):
        self.calls += 1
        raise OSError("disk full")

    def close(self):
        raise AssertionError("a disabled sink is not closed")


def test_tracker_fans_out_metrics_events_and_close():
    first, second, plain = ListSink(), ListSink(), MetricsOnlySink()
    assert isinstance(first, Sink) and isinstance(plain, Sink)
    with Tracker([first, second, plain]) as tracker:
        tracker.log(1, {"reward/mean": 0.5, "count": np.int64(3), "kl": torch.tensor(0.25), "flag": True})
        tracker.event("checkpoint", "saved", step=1, data={"path": "/x"})
    expected = (1, {"reward/mean": 0.5, "count": 3, "kl": 0.25, "flag": 1})
    assert first.logged == [expected] and second.logged == [expected]
    assert isinstance(first.logged[0][1]["count"], int)
    assert first.events == [("checkpoint", "saved", 1, {"path": "/x"})]
    assert plain.logged == [1]  # no event method: events are not sent to it
    assert first.closed and second.closed
    with pytest.raises(StateError, match="closed"):
        tracker.log(2, {})


def test_raising_sink_is_disabled_and_reported_once():
    broken, good = BrokenSink(), ListSink()
    tracker = Tracker([broken, good])
    with pytest.warns(RuntimeWarning, match="BrokenSink failed in log.*disk full") as caught:
        tracker.log(1, {"a": 1.0})
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.log(2, {"a": 2.0})
        tracker.close()
    assert broken.calls == 1
    assert [step for step, _ in good.logged] == [1, 2]
    assert tracker.active_sinks == [good] and good.closed


def test_non_scalar_metric_is_dropped_with_one_warning():
    sink = ListSink()
    tracker = Tracker([sink])
    with pytest.warns(RuntimeWarning, match="'hist' has a non-scalar value"):
        tracker.log(1, {"hist": torch.ones(3), "ok": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.log(2, {"hist": torch.ones(3), "ok": 2.0})
    assert sink.logged == [(1, {"ok": 1.0}), (2, {"ok": 2.0})]


def test_run_store_sink_writes_metrics_and_events(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        store.create_run("r", "r", "rlvr", {})
        tracker = Tracker([RunStoreSink(store, "r")])
        tracker.log(1, {"reward/mean": 0.25, "loss/policy": float("nan")})
        tracker.log(2, {"reward/mean": 0.5})
        tracker.event("stage", "generate done", step=2, data={"seconds": 1.5})
        tracker.close()
        series = store.get_metrics("r")
        assert series["reward/mean"] == [(1, 0.25), (2, 0.5)]
        assert math.isnan(series["loss/policy"][0][1])
        assert store.get_events("r")[0]["data"] == {"seconds": 1.5}
        store.log_event("r", "note", "store still open after tracker.close()")


def test_tensorboard_sink_writes_readable_scalars(tmp_path):
    logdir = tmp_path / "tb"
    tracker = Tracker([TensorBoardSink(logdir)])
    for step in range(1, 4):
        tracker.log(step, {"reward/mean": step * 0.25, "perf/tokens_per_s": 1000 * step})
    tracker.event("checkpoint", "saved step_000003", step=3)
    tracker.close()
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    assert {"reward/mean", "perf/tokens_per_s"} <= set(accumulator.Tags()["scalars"])
    rewards = accumulator.Scalars("reward/mean")
    assert [(e.step, e.value) for e in rewards] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert [e.value for e in accumulator.Scalars("perf/tokens_per_s")] == [1000, 2000, 3000]


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("reward/mean", 0.43812, "0.438"),
        ("actor/kl", 0.0012, "0.0012"),
        ("actor/kl", 0.000012345, "1.23e-05"),
        ("loss/policy", 12.3456, "12.35"),
        ("perf/tokens_per_s", 2310.4, "2310"),
        ("samples", 64, "64"),
        ("time/step", 0.4123, "0.41s"),
        ("time/step", 95.23, "95.2s"),
        ("loss/policy", float("nan"), "nan"),
        ("reward/mean", 1.0, "1"),
    ],
)
def test_format_value(key, value, text):
    assert format_value(key, value) == text


def test_console_plain_lines_on_a_pipe():
    stream = io.StringIO()
    console = ConsoleProgress(total_steps=200, stream=stream)
    assert not console.interactive
    console.log(
        12,
        {
            "perf/tokens_per_s": 2310.2,
            "time/step": 0.41,
            "actor/kl": 0.0012,
            "reward/mean": 0.438,
            "not/shown": 5.0,
        },
    )
    console.event("checkpoint", "saved step_000012", step=12)
    console.log(13, {})
    console.close()
    assert stream.getvalue().splitlines() == [
        "step 12/200 | reward/mean 0.438 | actor/kl 0.0012 | time/step 0.41s | perf/tokens_per_s 2310",
        "[checkpoint] saved step_000012 (step 12)",
        "step 13/200",
    ]


def test_console_custom_keys_and_summary():
    stream = io.StringIO()
    console = ConsoleProgress(
        total_steps=200, start_step=150, keys=["loss/policy", "reward/mean"], stream=stream
    )
    console.log(200, {"reward/mean": 0.91, "loss/policy": -0.0213})
    assert stream.getvalue() == "step 200/200 | loss/policy -0.0213 | reward/mean 0.91\n"
    summary = console.summary({"reward/mean": 0.91})
    assert re.fullmatch(r"done: 50 steps in \d+\.\ds \(resumed at step 150\) \| reward/mean 0\.91", summary)
    assert console.summary().endswith("| loss/policy -0.0213 | reward/mean 0.91")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_progress_bar_on_a_terminal():
    stream = FakeTerminal()
    console = ConsoleProgress(total_steps=10, stream=stream)
    assert console.interactive
    for step in range(1, 11):
        console.log(step, {"reward/mean": step / 10})
    console.event("stage", "finished")
    console.close()
    console.close()
    output = stream.getvalue()
    assert "step 10/10" in output and "reward/mean 1" in output
    assert "[stage] finished" in output
