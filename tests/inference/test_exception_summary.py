"""Failure reasons shown to people name the exception's type once."""

from __future__ import annotations

import pytest

from inference.services import exception_summary


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("bad shape"), "ValueError: bad shape"),
        # TorchScript errors end with their own "RuntimeError: ..." line after the traceback.
        (RuntimeError("Traceback of TorchScript:\n  x = f()\nRuntimeError: too large"), "RuntimeError: too large"),
        (RuntimeError("RuntimeError: already named"), "RuntimeError: already named"),
        (KeyError(), "KeyError"),
    ],
)
def test_exception_summary_names_the_type_once(exc, expected):
    assert exception_summary(exc) == expected
