"""The error tree and its status table."""

from __future__ import annotations

import pytest

from cellplane import errors


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InstanceNotFound("x"), errors.Code.NOT_FOUND),
        (errors.WrongState("x"), errors.Code.FAILED_PRECONDITION),
        (errors.CellUnavailable("x"), errors.Code.UNAVAILABLE),
        (errors.NoValidHost("x"), errors.Code.RESOURCE_EXHAUSTED),
        (errors.ConfigError("k", "bad"), errors.Code.INVALID_ARGUMENT),
        (errors.Timeout("x"), errors.Code.DEADLINE_EXCEEDED),
        (ValueError("boom"), errors.Code.INTERNAL),
    ],
)
def test_status_of_maps_each_error_to_its_code(exc: BaseException, code: errors.Code) -> None:
    assert errors.status_of(exc)[0] is code


def test_unknown_errors_become_internal_with_their_type() -> None:
    code, message = errors.status_of(KeyError("k"))
    assert code is errors.Code.INTERNAL and "KeyError" in message


def test_from_status_rebuilds_the_matching_class() -> None:
    rebuilt = errors.from_status(int(errors.Code.FAILED_PRECONDITION), "instance is stopped")
    assert isinstance(rebuilt, errors.WrongState)
    assert str(rebuilt) == "instance is stopped"
    odd = errors.from_status(999, "what")
    assert odd.code is errors.Code.UNKNOWN
