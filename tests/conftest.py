"""Suite-wide setup: build roll's C++ decode loop once, before any test starts a job.

On a machine without the build cache, the first decode step anywhere would build it (~40 s on
2 cores), inside whichever test got there first: a test with a rollout timeout would see a slow
chunk. Built here, every test and Ray worker finds it in ~/.cache/torch_extensions.
"""

from __future__ import annotations

import pytest

from roll.engines import decode_ext


@pytest.fixture(scope="session", autouse=True)
def decode_ext_built() -> None:
    decode_ext.load()  # None where it cannot be built: the tests of decode_ext say why
