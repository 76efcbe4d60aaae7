"""Subprotocol negotiation at the WebSocket handshake, as pure functions (PROTOCOL.md §2).

Imports: attrs, tickwire.errors.

A client offers tokens in its order of preference; the server picks the first token of *its*
preference order that the client offered and that its policy allows. Offers beginning with
``tickwire.auth.`` carry a bearer token and are never selected.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from tickwire.errors import NegotiationError

__all__ = [
    "AUTH_PREFIX",
    "JSON",
    "MSGPACK",
    "MSGPACK_ZSTD",
    "Codec",
    "Negotiated",
    "NegotiationPolicy",
    "client_offer",
    "parse_offer",
    "parse_selected",
    "select",
    "token_from_offer",
]

MSGPACK_ZSTD: Final = "tickwire.v2+zstd"  # §2.1: msgpack, zstd per message, dictionaries
MSGPACK: Final = "tickwire.v2"  # §2.1: msgpack, never compressed
JSON: Final = "tickwire.v2.json"  # §2.1: JSON text frames, for a browser console
AUTH_PREFIX: Final = "tickwire.auth."  # §2.3: a bearer token, never selected
NO_COMMON_SUBPROTOCOL: Final = 4004  # §6: the close code when nothing matches


class Codec(enum.Enum):
    """How message bodies are written."""

    MSGPACK = "msgpack"
    JSON = "json"


@attrs.frozen(cache_hash=True)  # a dict key on every fan-out, once per subscriber
class Negotiated:
    """What the handshake settled: the subprotocol, its codec, and whether zstd is allowed."""

    subprotocol: str
    codec: Codec
    compression: bool

    @classmethod
    def of(cls, subprotocol: str) -> Negotiated:
        """The settlement a known tickwire subprotocol token stands for.

        Raises:
            NegotiationError: not a tickwire/2 codec token.
        """
        try:
            codec, compression = _TOKENS[subprotocol]
        except KeyError:
            raise NegotiationError(f"not a tickwire/2 subprotocol: {subprotocol!r}") from None
        return cls(subprotocol, codec, compression)


_TOKENS: Final[dict[str, tuple[Codec, bool]]] = {
    MSGPACK_ZSTD: (Codec.MSGPACK, True),
    MSGPACK: (Codec.MSGPACK, False),
    JSON: (Codec.JSON, False),
}


def _tokens(tokens: Iterable[str]) -> tuple[str, ...]:
    return tuple(tokens)


@attrs.frozen(kw_only=True)
class NegotiationPolicy:
    """The server's side of negotiation.

    Attributes:
        preference: tokens in the server's order of preference.
        compression: offer ``tickwire.v2+zstd`` at all.
        json: offer the JSON debugging variant at all.
    """

    preference: tuple[str, ...] = attrs.field(
        default=(MSGPACK_ZSTD, MSGPACK, JSON), converter=_tokens
    )
    compression: bool = True
    json: bool = True

    def __attrs_post_init__(self) -> None:
        unknown = [t for t in self.preference if t not in _TOKENS]
        if unknown:
            raise ValueError(f"unknown subprotocols in preference: {unknown}")

    @property
    def supported(self) -> tuple[str, ...]:
        """The tokens this policy can select, in preference order."""
        return tuple(
            t
            for t in self.preference
            if (self.compression or t != MSGPACK_ZSTD) and (self.json or t != JSON)
        )


def parse_offer(headers: Iterable[str]) -> list[str]:
    """Split ``Sec-WebSocket-Protocol`` header values into tokens, in order."""
    return [t.strip() for value in headers for t in value.split(",") if t.strip()]


def client_offer(
    *, compression: bool = True, json: bool = False, token: str | None = None
) -> list[str]:
    """The tokens a client offers, best first: zstd if allowed, plain msgpack, JSON if asked.

    A *token* is appended as ``tickwire.auth.<token>`` (§2.3); it must be an HTTP token
    (a JWT is).
    """
    offer = [MSGPACK_ZSTD] if compression else []
    offer.append(MSGPACK)
    if json:
        offer.append(JSON)
    if token is not None:
        if not token or any(c in _SEPARATORS or ord(c) <= 32 or ord(c) >= 127 for c in token):
            raise ValueError("a subprotocol token may hold no spaces or separators")
        offer.append(AUTH_PREFIX + token)
    return offer


_SEPARATORS: Final = frozenset('()<>@,;:\\"/[]?={} \t')


def select(offered: Sequence[str], policy: NegotiationPolicy | None = None) -> Negotiated:
    """The server's choice among *offered* tokens (§2.2).

    Raises:
        NegotiationError: nothing offered is supported; the server then accepts the
            upgrade without a subprotocol and closes with 4004 (§2.2).
    """
    policy = policy or NegotiationPolicy()
    wanted = set(offered)
    for token in policy.supported:
        if token in wanted:
            return Negotiated.of(token)
    raise NegotiationError("no common subprotocol: server supports " + " ".join(policy.supported))


def parse_selected(selected: str | None, offered: Sequence[str]) -> Negotiated:
    """The client's reading of the server's choice.

    Raises:
        NegotiationError: the server chose nothing, or something the client did not offer.
    """
    if not selected:
        raise NegotiationError("the server selected no subprotocol")
    if selected not in offered or selected.startswith(AUTH_PREFIX):
        raise NegotiationError(f"the server selected {selected!r}, which was not offered")
    return Negotiated.of(selected)


def token_from_offer(offered: Iterable[str]) -> str | None:
    """The bearer token carried in a ``tickwire.auth.`` offer, if any (§2.3)."""
    for t in offered:
        if t.startswith(AUTH_PREFIX) and len(t) > len(AUTH_PREFIX):
            return t[len(AUTH_PREFIX) :]
    return None
