"""The one place that decides what a missing test dependency means.

In CI (CI=true) PostgreSQL, SoftHSM2, pgserver and the client tools must be there: a missing
one fails the run. On a developer's machine the test is skipped with the same message.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
