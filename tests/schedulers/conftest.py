"""A local Ray for the scheduler tests (2 CPUs), one per test module: other folders' tests start
their own Ray, so none may outlive its module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    # workers import test helpers (paced workers, reward plugins) from this folder
    path = f"{HERE.parents[1]}:{HERE}"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()
