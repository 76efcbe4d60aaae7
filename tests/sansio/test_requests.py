"""tickwire.sansio.requests: the credentials' states and deadlines, and SUBSCRIBE's
options, driven synchronously with the clock given in."""

from __future__ import annotations

import math

import attrs
import pytest

from tickwire.sansio.fanout import Overflow
from tickwire.sansio.requests import (
    AUTH_EXPIRED,
    AUTH_FAILED,
    AUTH_TIMEOUT,
    AuthState,
    Credentials,
    SubscribeOptions,
    subscribe_options,
)


@attrs.frozen
class Person:
    subject: str


def test_pending_credentials_end_with_4005_at_the_auth_timeout() -> None:
    credentials = Credentials.pending(100.0, auth_timeout=10.0)
    assert credentials.state is AuthState.PENDING
    assert not credentials.may_request
    assert credentials.deadline() == 110.0
    assert credentials.due(109.9) is None
    assert credentials.due(110.0) == (AUTH_TIMEOUT, "authentication timeout")
    assert credentials.state is AuthState.ENDED
    assert credentials.deadline() == math.inf
    assert credentials.due(200.0) is None  # once


def test_an_auth_in_time_authenticates_and_its_expiry_becomes_the_deadline() -> None:
    credentials = Credentials.pending(0.0, auth_timeout=10.0)
    assert credentials.refresh(Person("ann"), 5.0, expires_in=60.0) is None
    assert credentials.state is AuthState.AUTHENTICATED
    assert credentials.may_request
    assert credentials.principal == Person("ann")
    assert credentials.deadline() == 65.0
    assert credentials.due(11.0) is None  # the auth timeout no longer applies
    assert credentials.due(65.0) == (AUTH_EXPIRED, "authentication expired")


def test_a_refresh_for_the_same_subject_moves_the_expiry() -> None:
    credentials = Credentials.authenticated(Person("ann"), 0.0, expires_in=30.0)
    assert credentials.refresh(Person("ann"), 20.0, expires_in=30.0) is None
    assert credentials.deadline() == 50.0
    assert credentials.due(30.0) is None
    assert credentials.refresh(Person("ann"), 40.0, expires_in=None) is None
    assert credentials.deadline() == math.inf


def test_a_refresh_for_another_subject_ends_with_4003_and_keeps_the_old_principal() -> None:
    credentials = Credentials.authenticated(Person("ann"), 0.0)
    ended = credentials.refresh(Person("bob"), 1.0, expires_in=None)
    assert ended == (AUTH_FAILED, "a refreshed token must be for the same subject")
    assert credentials.state is AuthState.ENDED
    assert credentials.principal == Person("ann")
    assert credentials.refresh(Person("ann"), 2.0, None) == ended  # ended stays ended


def test_a_refused_token_or_a_request_before_auth_is_4003() -> None:
    credentials = Credentials.pending(0.0, auth_timeout=10.0)
    assert credentials.refuse("bad signature") == (AUTH_FAILED, "bad signature")
    assert credentials.state is AuthState.ENDED
    assert credentials.due(20.0) is None


def test_no_authenticator_means_authenticated_for_ever() -> None:
    credentials = Credentials.authenticated(None, 0.0)
    assert credentials.may_request
    assert credentials.deadline() == math.inf


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, SubscribeOptions()),
        ({"policy": "conflate"}, SubscribeOptions(Overflow.CONFLATE, None)),
        ({"max_rate": 4}, SubscribeOptions(None, 0.25)),
        (
            {"policy": "drop_oldest", "max_rate": 1000.0},
            SubscribeOptions(Overflow.DROP_OLDEST, 0.001),
        ),
        ({"policy": "fastest"}, "policy must be one of"),
        ({"policy": 3}, "policy must be one of"),
        ({"max_rate": 0}, "max_rate must be"),
        ({"max_rate": 1001}, "max_rate must be"),
        ({"max_rate": True}, "max_rate must be"),  # a bool is no number of updates
        ({"max_rate": "4"}, "max_rate must be"),
        ({"colour": "red", "size": 1}, "unknown options: colour, size"),
    ],
)
def test_subscribe_options(options: dict[str, object], expected: SubscribeOptions | str) -> None:
    got = subscribe_options(options)
    if isinstance(expected, str):
        assert isinstance(got, str)
        assert got.startswith(expected)
    else:
        assert got == expected


def test_a_rate_limit_applies_to_tables_only() -> None:
    options = SubscribeOptions(Overflow.CONFLATE, 0.25)
    assert options.custom
    assert options.for_topic(is_table=True) == options
    assert options.for_topic(is_table=False) == SubscribeOptions(Overflow.CONFLATE, None)
    assert not SubscribeOptions().custom
