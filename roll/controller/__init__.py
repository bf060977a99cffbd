"""The single-controller core: ``Batch`` data, dispatch modes, ``Worker`` and ``WorkerGroup``.

The driver runs a pipeline as plain Python and calls worker groups (one Ray actor per rank) as if
they were local objects; each worker method declares with ``@register`` how a call is spread.
"""

from roll.controller.batch import Batch
from roll.controller.dispatch import CallPlan, Dispatch, DispatchSpec, get_dispatch, register
from roll.controller.group import (
    CallTimeoutError,
    GroupFuture,
    GroupMethod,
    WorkerGroup,
    describe_failure,
    start_groups,
    wait_all,
)
from roll.controller.worker import Worker

__all__ = [
    "Batch",
    "CallPlan",
    "CallTimeoutError",
    "Dispatch",
    "DispatchSpec",
    "GroupFuture",
    "GroupMethod",
    "Worker",
    "WorkerGroup",
    "describe_failure",
    "get_dispatch",
    "register",
    "start_groups",
    "wait_all",
]
