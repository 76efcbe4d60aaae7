"""What a server connection decides about its client on its own, free of I/O: the
credentials' states and deadlines, and the options of a SUBSCRIBE.

Imports: attrs, tickwire.sansio.events, tickwire.sansio.fanout.

Theory of operation. A connection's protocol is three pure objects: the WebSocket
(:mod:`tickwire.sansio.websocket`: frames, control frames, the heartbeat's timing), the
session (:mod:`tickwire.sansio.session`: tickwire's messages) and, here, what the server
decides about one client without asking anyone else. What involves the shared state of
the server (topics, subscriptions, the backplane) stays in the trio layer, which asks the
hub.

:class:`Credentials` has explicit states::

    PENDING --AUTH accepted--> AUTHENTICATED --AUTH for the same subject--> AUTHENTICATED
       |                           |
       +--auth_timeout passes------+--expiry passes (no refresh)--> ENDED (4005 / 4001)
       +--AUTH refused, or for another subject, or a request before AUTH--> ENDED (4003)

It never reads a clock: the caller passes *now* (its monotonic clock) and, for a
principal that expires, the seconds it has left (from its wall-clock ``expires_at``).
:meth:`Credentials.deadline` is when :meth:`Credentials.due` must next be asked, so the
connection's reader folds it into its one read deadline.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

from tickwire.sansio.fanout import Overflow

__all__ = [
    "AUTH_EXPIRED",
    "AUTH_FAILED",
    "AUTH_TIMEOUT",
    "MAX_RATE",
    "AuthState",
    "Credentials",
    "SubscribeOptions",
    "subscribe_options",
]

AUTH_EXPIRED: Final = 4001  # docs/PROTOCOL.md §6: credentials expired without a refresh
AUTH_FAILED: Final = 4003  # refused, another subject, or a request before AUTH
AUTH_TIMEOUT: Final = 4005  # no AUTH within auth_timeout
MAX_RATE: Final = 1000.0  # updates a second: the most a subscription's max_rate may ask
_POLICIES: Final = {p.value: p for p in Overflow}


class AuthState(enum.Enum):
    """Where a connection's :class:`Credentials` are."""

    PENDING = "pending"  # the handshake carried none: AUTH must come in time
    AUTHENTICATED = "authenticated"  # a principal (None when the server checks nothing)
    ENDED = "ended"  # the connection must close (:attr:`Credentials.ended` says how)


@attrs.define(eq=False)
class Credentials:
    """One connection's credentials over time (see the module's theory of operation).

    Build with :meth:`pending` or :meth:`authenticated`.
    """

    state: AuthState
    principal: Any = None
    _deadline: float = math.inf  # AUTH's (PENDING) or the expiry's (AUTHENTICATED)
    ended: tuple[int, str] | None = None  # the close code and reason, once ENDED

    @classmethod
    def pending(cls, now: float, auth_timeout: float) -> Credentials:
        """No credentials yet: AUTH must arrive within *auth_timeout* seconds of *now*."""
        return cls(AuthState.PENDING, None, now + auth_timeout)

    @classmethod
    def authenticated(
        cls, principal: Any, now: float, expires_in: float | None = None
    ) -> Credentials:
        """*principal* from the handshake, valid for *expires_in* seconds (None: for ever)."""
        return cls(AuthState.AUTHENTICATED, principal, _expiry(now, expires_in))

    @property
    def may_request(self) -> bool:
        """Whether requests other than AUTH may be served now."""
        return self.state is AuthState.AUTHENTICATED

    def deadline(self) -> float:
        """When :meth:`due` may next end the connection (math.inf: never)."""
        return self._deadline if self.state is not AuthState.ENDED else math.inf

    def due(self, now: float) -> tuple[int, str] | None:
        """The close code and reason if the credentials end at *now*, else None."""
        if self.state is AuthState.ENDED or now < self._deadline:
            return None
        if self.state is AuthState.PENDING:
            return self._end(AUTH_TIMEOUT, "authentication timeout")
        return self._end(AUTH_EXPIRED, "authentication expired")

    def refresh(
        self, principal: Any, now: float, expires_in: float | None
    ) -> tuple[int, str] | None:
        """An AUTH's token was verified as *principal*: take it (None), or end the
        connection when it is another subject than the one it replaces (4003)."""
        if self.state is AuthState.ENDED:
            return self.ended
        old = getattr(self.principal, "subject", None)
        if old is not None and getattr(principal, "subject", None) != old:
            return self._end(AUTH_FAILED, "a refreshed token must be for the same subject")
        self.state = AuthState.AUTHENTICATED
        self.principal = principal
        self._deadline = _expiry(now, expires_in)
        return None

    def refuse(self, reason: str) -> tuple[int, str]:
        """An AUTH's token was refused (or a request came before AUTH): 4003."""
        return self._end(AUTH_FAILED, reason)

    def _end(self, code: int, reason: str) -> tuple[int, str]:
        self.state = AuthState.ENDED
        self.ended = (code, reason)
        return self.ended


def _expiry(now: float, expires_in: float | None) -> float:
    return math.inf if expires_in is None else now + expires_in


@attrs.frozen
class SubscribeOptions:
    """A SUBSCRIBE's options: its own slow-consumer *policy* (None: the topic's) and the
    seconds between deltas of a rate-limited table subscription (*interval*, None: none)."""

    policy: Overflow | None = None
    interval: float | None = None

    @property
    def custom(self) -> bool:
        """Whether they change anything."""
        return self.policy is not None or self.interval is not None

    def for_topic(self, is_table: bool) -> SubscribeOptions:
        """As they apply to one topic: a stream has no rate limit."""
        return self if is_table else SubscribeOptions(self.policy, None)


def subscribe_options(options: Mapping[str, Any]) -> SubscribeOptions | str:
    """A SUBSCRIBE's *options* (docs/PROTOCOL.md §4.4: ``policy``, ``max_rate``), or what
    is wrong with them (for ERROR 400)."""
    rest = dict(options)
    policy: Overflow | None = None
    interval: float | None = None
    if "policy" in rest:
        name = rest.pop("policy")
        if not isinstance(name, str) or name not in _POLICIES:
            return f"policy must be one of {', '.join(_POLICIES)}"
        policy = _POLICIES[name]
    if "max_rate" in rest:
        rate = rest.pop("max_rate")
        if type(rate) not in (int, float) or not 0 < rate <= MAX_RATE:
            return f"max_rate must be a number of updates a second in (0, {MAX_RATE:g}]"
        interval = 1.0 / rate
    if rest:
        return f"unknown options: {', '.join(sorted(rest))}"
    return SubscribeOptions(policy, interval)
