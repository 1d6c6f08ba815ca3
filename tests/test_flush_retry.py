"""The transactional tests' flush is repeated when PostgreSQL aborts it for a deadlock, and only then."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError
from django.db import OperationalError

from tests.conftest import FLUSH_ATTEMPTS, _flush_retrying_deadlocks


def _failing(times: int, cause: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def teardown(self: object) -> None:
        calls.append(1)
        if len(calls) <= times:
            raise CommandError("Database couldn't be flushed.") from cause

    return calls, _flush_retrying_deadlocks(teardown)


def test_a_deadlocked_flush_is_flushed_again():
    calls, flush = _failing(FLUSH_ATTEMPTS - 1, OperationalError("deadlock detected"))
    flush(object())
    assert len(calls) == FLUSH_ATTEMPTS


def test_a_flush_that_keeps_deadlocking_still_fails():
    calls, flush = _failing(FLUSH_ATTEMPTS, OperationalError("deadlock detected"))
    with pytest.raises(CommandError):
        flush(object())
    assert len(calls) == FLUSH_ATTEMPTS


def test_any_other_flush_error_fails_at_once():
    calls, flush = _failing(1, OperationalError("relation does not exist"))
    with pytest.raises(CommandError):
        flush(object())
    assert len(calls) == 1
