"""Which database failures the keystore retries, and what a caller hears after the budget.

The failures are the driver's own exception classes, raised by an attempt that fails the way a
restarting server makes it fail (tests/test_db_faults.py and tests/test_db_restart.py meet them
for real)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg.errors
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from keystore import KeystoreUnreachable
from keystore.db import _retrying

DELAYS_S = (0.01, 0.02, 0.04)


def _failing(error: DBAPIError, *, times: int) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return calls, attempt


def _pg(cls: type[OperationalError] | type[IntegrityError], sqlstate: str) -> DBAPIError:
    return cls("SELECT 1", {}, psycopg.errors.lookup(sqlstate)("from the server"))


@pytest.mark.parametrize(
    ("sqlstate", "meaning"),
    [
        ("57P01", "admin shutdown: a restart or pg_terminate_backend"),
        ("57P03", "cannot connect now: the server is starting up"),
        ("08006", "connection failure"),
        ("40P01", "deadlock victim"),
        ("40001", "serialization failure"),
    ],
)
def test_a_transient_failure_is_retried_until_it_passes(sqlstate: str, meaning: str) -> None:
    slept: list[float] = []
    calls, attempt = _failing(_pg(OperationalError, sqlstate), times=2)
    result = _retrying(
        attempt,
        what="write",
        dialect="postgresql",
        sleep=slept.append,
        delays_s=DELAYS_S,
    )
    assert (result, len(calls), slept) == ("done", 3, [0.01, 0.02]), meaning


def test_past_the_budget_the_caller_hears_keystore_unreachable() -> None:
    slept: list[float] = []
    calls, attempt = _failing(_pg(OperationalError, "57P03"), times=99)
    with pytest.raises(KeystoreUnreachable) as caught:
        _retrying(
            attempt,
            what="read",
            dialect="postgresql",
            sleep=slept.append,
            delays_s=DELAYS_S,
            location="postgresql+psycopg://keyrelay:***@db/keys",
        )
    assert len(calls) == len(DELAYS_S) + 1 and slept == list(DELAYS_S)
    assert "could not be reached" in str(caught.value)
    assert caught.value.location == "postgresql+psycopg://keyrelay:***@db/keys"
    assert "from the server" not in str(caught.value)  # the driver's text stays in the cause


def test_a_constraint_violation_is_raised_at_once() -> None:
    slept: list[float] = []
    calls, attempt = _failing(_pg(IntegrityError, "23505"), times=1)
    with pytest.raises(IntegrityError):
        _retrying(
            attempt,
            what="write",
            dialect="postgresql",
            sleep=slept.append,
            delays_s=DELAYS_S,
        )
    assert (len(calls), slept) == (1, [])
