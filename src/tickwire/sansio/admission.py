"""Admission and rate decisions, as pure logic: token buckets, connection counts, Origin.

Imports: attrs, stdlib. Time is passed in (seconds, any monotonic clock): this module never
reads a clock, so tests drive it directly and the trio layer passes ``trio.current_time()``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs
from attrs.validators import ge, gt, instance_of

__all__ = [
    "Admission",
    "AdmissionControl",
    "RateLimiter",
    "RateVerdict",
    "Throttle",
    "TokenBucket",
    "client_address",
    "in_networks",
    "origin_allowed",
    "parse_networks",
]


@attrs.define(eq=False)
class TokenBucket:
    """*rate* tokens a second, holding at most *burst*; it starts full."""

    rate: float = attrs.field(validator=gt(0))
    burst: float = attrs.field(validator=gt(0))
    _tokens: float = attrs.field(init=False)
    _stamp: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._tokens = self.burst

    def _refill(self, now: float) -> None:
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now if self._stamp is None else max(self._stamp, now)

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take *amount* tokens if there are that many; return whether it did."""
        self._refill(now)
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False

    def wait_time(self, now: float, amount: float = 1.0) -> float:
        """Seconds until *amount* tokens will be there (0 if they are now)."""
        self._refill(now)
        return max(0.0, (amount - self._tokens) / self.rate)


@attrs.define(eq=False)
class Throttle(TokenBucket):
    """A bandwidth cap: *rate* bytes a second, with *burst* bytes of allowance.

    Unlike a plain :class:`TokenBucket` a spend may overdraw it (a frame is never split);
    the debt is then the delay before the next write.
    """

    def allows(self, now: float, size: int) -> bool:
        """Whether *size* bytes may go now without overdrawing."""
        self._refill(now)
        return self._tokens >= size

    def available(self, now: float) -> float:
        """Bytes that may go now (negative while in debt)."""
        self._refill(now)
        return self._tokens

    def spend(self, now: float, size: float) -> None:
        """Record *size* bytes sent at *now*."""
        self._refill(now)
        self._tokens -= size

    def delay(self, now: float) -> float:
        """Seconds until the debt is paid (0 when there is none)."""
        self._refill(now)
        # Under a byte of debt is none: a delay below the clock's resolution never passes.
        return 0.0 if self._tokens > -1.0 else -self._tokens / self.rate


class RateVerdict(enum.Enum):
    """What to do with a message under a connection's rate limits."""

    OK = "ok"  # process it
    WARN = "warn"  # drop it and send ERROR 429 (the first excess in a run)
    DROP = "drop"  # drop it silently (still over, already warned)
    CLOSE = "close"  # it goes on: close with 1008


@attrs.define(eq=False, kw_only=True)
class RateLimiter:
    """Per-connection limits on messages and bytes a second, with a burst allowance.

    Over either limit the message is dropped: the first time in a run with a warning, and
    when a run of excess messages exceeds *max_strikes*, the verdict is to close.
    """

    messages_per_second: float = attrs.field(validator=gt(0))
    bytes_per_second: float = attrs.field(validator=gt(0))
    burst_seconds: float = attrs.field(default=2.0, validator=gt(0))
    max_strikes: int = attrs.field(default=50, validator=[instance_of(int), ge(1)])
    _messages: TokenBucket = attrs.field(init=False)
    _bytes: TokenBucket = attrs.field(init=False)
    _strikes: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._messages = TokenBucket(
            self.messages_per_second, max(1.0, self.messages_per_second * self.burst_seconds)
        )
        self._bytes = TokenBucket(self.bytes_per_second, self.bytes_per_second * self.burst_seconds)

    def check(self, now: float, size: int) -> RateVerdict:
        """The verdict for one received message of *size* bytes at time *now*."""
        if self._messages.take(now) and self._bytes.take(now, size):
            self._strikes = 0
            return RateVerdict.OK
        self._strikes += 1
        if self._strikes == 1:
            return RateVerdict.WARN
        if self._strikes > self.max_strikes:
            return RateVerdict.CLOSE
        return RateVerdict.DROP


@attrs.frozen
class Admission:
    """Whether a new connection may proceed; if not, why and when to come back."""

    admitted: bool
    reason: str = ""
    retry_after: float = 0.0


@attrs.define(eq=False, kw_only=True)
class AdmissionControl:
    """Connection limits: in total, per client address, new connections a second, and
    handshakes in progress.

    Call :meth:`admit` when a connection arrives, :meth:`establish` once its upgrade
    request has been read (only then does it count against *max_connections*: a slow
    handshake holds a handshake slot, never a connection slot), and :meth:`release` when an
    admitted one ends.
    """

    max_connections: int = attrs.field(validator=[instance_of(int), ge(1)])
    max_per_address: int = attrs.field(validator=[instance_of(int), ge(1)])
    new_per_second: float = attrs.field(validator=gt(0))
    retry_after: float = attrs.field(default=1.0, validator=ge(0))
    max_handshakes: int = attrs.field(default=1024, validator=[instance_of(int), ge(1)])
    _open: int = attrs.field(init=False, default=0)
    _handshaking: int = attrs.field(init=False, default=0)
    _by_address: dict[str, int] = attrs.field(init=False, factory=dict)
    _new: TokenBucket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._new = TokenBucket(self.new_per_second, max(1.0, self.new_per_second))

    @property
    def open(self) -> int:
        """Connections established and not yet released."""
        return self._open

    @property
    def handshaking(self) -> int:
        """Connections admitted whose handshake has not been read yet."""
        return self._handshaking

    def admit(self, address: str, now: float, *, per_address: bool = True) -> Admission:
        """Decide on a new connection from *address*; an admitted one is counted as
        handshaking, and under its address.

        *per_address* False skips the per-address limit (a trusted proxy: the limit
        applies once :meth:`readdress` names the client behind it)."""
        if self._open >= self.max_connections:
            return Admission(False, "server full", self.retry_after)
        if self._handshaking >= self.max_handshakes:
            return Admission(False, "too many handshakes in progress", self.retry_after)
        if per_address and self._by_address.get(address, 0) >= self.max_per_address:
            return Admission(False, "too many connections from this address", self.retry_after)
        if not self._new.take(now):
            return Admission(
                False, "too many new connections", max(self.retry_after, self._new.wait_time(now))
            )
        self._handshaking += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return Admission(True)

    def establish(self) -> Admission:
        """A handshaking connection's upgrade request is in: count it as open if there is
        room (otherwise it stays handshaking until released, and the answer says why)."""
        if self._open >= self.max_connections:
            return Admission(False, "server full", self.retry_after)
        self._handshaking -= 1
        self._open += 1
        return Admission(True)

    def readdress(self, old: str, new: str) -> Admission:
        """Count an admitted connection under *new* (the client behind a proxy at *old*)
        if *new* is within its limit; otherwise it stays counted under *old* and the
        answer says why to refuse it."""
        if old == new:
            return Admission(True)
        if self._by_address.get(new, 0) >= self.max_per_address:
            return Admission(False, "too many connections from this address", self.retry_after)
        self._by_address[new] = self._by_address.get(new, 0) + 1
        self._forget(old)
        return Admission(True)

    def release(self, address: str, *, established: bool = True) -> None:
        """An admitted connection from *address* ended (*established*: after
        :meth:`establish` admitted it)."""
        if established:
            self._open -= 1
        else:
            self._handshaking -= 1
        self._forget(address)

    def _forget(self, address: str) -> None:
        left = self._by_address.get(address, 0) - 1
        if left > 0:
            self._by_address[address] = left
        else:
            self._by_address.pop(address, None)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """Addresses and CIDR networks ("10.0.0.0/8", "::1").

    Raises:
        ValueError: naming the item that is neither.
    """
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return tuple(networks)


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    """Whether *address* (text) lies in one of *networks*; False for a non-address."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address: *peer*, unless *peer* is a trusted proxy and says in
    ``X-Forwarded-For`` who it forwards for. The list is read from the right, skipping
    trusted proxies; the first other address is the client's (what a client writes
    itself, to the left, is never believed)."""
    if not trusted or not forwarded_for or not in_networks(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not in_networks(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage: keep the proxy's address
    return hops[0] if hops else peer


def _origin_parts(origin: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port


def origin_allowed(
    origin: str | None, allowed: Sequence[str] | None, *, allow_missing: bool
) -> bool:
    """Whether a handshake's ``Origin`` passes the allowlist (cross-site WebSocket hijacking).

    Args:
        origin: the header's value, or None when absent (non-browser clients send none).
        allowed: entries like ``https://app.example.com`` (exact: scheme, host and port) or
            ``https://*.example.com`` (any subdomain, at any depth, not the bare domain);
            ``*`` allows every origin; None disables the check.
        allow_missing: whether a handshake without ``Origin`` passes.
    """
    if origin is None or origin == "":
        return allow_missing
    if allowed is None or "*" in allowed:
        return True
    parts = _origin_parts(origin)
    if parts is None:
        return False
    scheme, host, port = parts
    for entry in allowed:
        wanted = _origin_parts(entry.replace("*.", "wildcard.", 1))
        if wanted is None or wanted[0] != scheme or wanted[2] != port:
            continue
        if entry.lower().split("://", 1)[-1].startswith("*."):
            suffix = "." + wanted[1].removeprefix("wildcard.")
            if host.endswith(suffix) and len(host) > len(suffix):
                return True
        elif host == wanted[1]:
            return True
    return False
