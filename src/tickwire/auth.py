"""Authentication and authorisation: principals, topic permissions, a JWT authenticator.

Imports: attrs, pyjwt (``jwt``), tickwire.broadcast (pattern matching), stdlib.

What an authenticator is given (:class:`HandshakeRequest`) and may answer
(:class:`Refusal`) live here, below the server that calls it.

A :class:`Principal` is who a connection acts for and what it may do: the topic patterns
it may subscribe to and publish on, and when its credentials expire. :class:`JWTAuth` makes
one from a JSON Web Token (HS256, RS256, ES256 and friends, with ``exp``, ``nbf``, ``aud``
and ``iss`` checks and a clock-skew leeway), taken from ``Authorization: Bearer``, a
``tickwire.auth.`` subprotocol offer, or an AUTH message sent first.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import jwt
from attrs.validators import ge, instance_of

from tickwire.broadcast import valid_pattern

__all__ = [
    "PENDING",
    "AuthenticationError",
    "Authenticator",
    "Authorizer",
    "HandshakeRequest",
    "JWTAuth",
    "Principal",
    "Refusal",
    "pattern_covers",
]


@attrs.frozen
class HandshakeRequest:
    """What an authenticator sees of a handshake.

    Attributes:
        path: the request target, for example ``/ws?room=1``.
        headers: (lower-cased name, value) pairs as received.
        subprotocols: the offered tokens (credential offers included).
        remote: the client's address.
        token: a bearer token from ``Authorization: Bearer ...`` or a ``tickwire.auth.``
            offer, if any.
    """

    path: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]
    remote: str
    token: str | None

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


@attrs.frozen
class Refusal:
    """An authenticator's no: HTTP *status* (401 or 403) and a short reason."""

    status: int = 401
    reason: str = "unauthorized"


Authenticator = Callable[[HandshakeRequest], Awaitable[Any]]
"""``async def authenticate(request) -> principal | Refusal``: None refuses with 401."""
Authorizer = Callable[[Any, str, str], bool]
"""``authorize(principal, action, topic) -> bool``, *action* is "subscribe" or "publish"."""


class AuthenticationError(Exception):
    """A token was missing, malformed, badly signed, expired or for someone else."""


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = _Pending()
"""What an authenticator returns to accept the handshake and wait for an AUTH message."""


def pattern_covers(permission: str, pattern: str) -> bool:
    """Whether topic *pattern* (or name) lies within *permission* (``*``: one segment)."""
    want, have = permission.split("."), pattern.split(".")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _patterns(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    patterns = tuple(value)
    bad = [p for p in patterns if not valid_pattern(p)]
    if bad:
        raise ValueError(f"invalid topic patterns: {bad}")
    return patterns


@attrs.frozen(kw_only=True)
class Principal:
    """Who a connection acts for.

    Attributes:
        subject: the user or service (a JWT's ``sub``).
        subscribe: topic patterns it may subscribe to; None allows every topic.
        publish: topic patterns it may publish on; None allows every topic.
        expires_at: when its credentials expire, in Unix seconds, or None.
        claims: everything else the credentials said.
    """

    subject: str
    subscribe: tuple[str, ...] | None = attrs.field(default=None, converter=_patterns)
    publish: tuple[str, ...] | None = attrs.field(default=None, converter=_patterns)
    expires_at: float | None = None
    claims: Mapping[str, Any] = attrs.field(factory=dict)

    def allows(self, action: str, pattern: str) -> bool:
        """Whether it may *action* ("subscribe" or "publish") on topic *pattern*."""
        allowed = self.subscribe if action == "subscribe" else self.publish
        return allowed is None or any(pattern_covers(p, pattern) for p in allowed)


@attrs.frozen(kw_only=True)
class JWTAuth:
    """Verify JSON Web Tokens; pass an instance as a server's *authenticate*.

    Permissions come from the claim named *permissions_claim*, shaped
    ``{"subscribe": ["quotes.*"], "publish": ["orders.*"]}``; a missing list allows
    nothing, a missing claim allows *default_subscribe* and *default_publish*.

    Args:
        key: the HMAC secret, or the PEM public key for RS*/ES*/PS* algorithms.
        algorithms: accepted ``alg`` values (never "none").
        audience, issuer: when set, ``aud`` and ``iss`` must match.
        leeway: seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.
        require_exp: refuse tokens without ``exp``.
        first_message: accept a handshake without a token and wait for AUTH (§4.11).
    """

    key: str | bytes = attrs.field(repr=False)
    algorithms: tuple[str, ...] = attrs.field(default=("HS256",), converter=_strings)
    audience: str | None = None
    issuer: str | None = None
    leeway: float = attrs.field(default=30.0, validator=[instance_of(int | float), ge(0)])
    require_exp: bool = True
    first_message: bool = True
    permissions_claim: str = "tickwire"
    default_subscribe: tuple[str, ...] | None = attrs.field(default=None, converter=_patterns)
    default_publish: tuple[str, ...] | None = attrs.field(default=(), converter=_patterns)

    def __attrs_post_init__(self) -> None:
        if not self.algorithms or any(a.lower() == "none" for a in self.algorithms):
            raise ValueError("algorithms must name real signature algorithms")

    def verify(self, token: str) -> Principal:
        """The principal a token stands for.

        Raises:
            AuthenticationError: with a short reason safe to send to the client.
        """
        options: Any = {"require": ["exp"] if self.require_exp else []}
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("token for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("token from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise AuthenticationError("invalid token") from None
        permissions = claims.get(self.permissions_claim)
        subscribe: tuple[str, ...] | None
        publish: tuple[str, ...] | None
        if isinstance(permissions, Mapping):
            subscribe = _string_list(permissions.get("subscribe"))
            publish = _string_list(permissions.get("publish"))
        else:
            subscribe, publish = self.default_subscribe, self.default_publish
        try:
            return Principal(
                subject=str(claims.get("sub", "")),
                subscribe=subscribe,
                publish=publish,
                expires_at=float(claims["exp"]) + self.leeway if "exp" in claims else None,
                claims=claims,
            )
        except ValueError as exc:
            raise AuthenticationError(f"invalid permissions: {exc}") from None

    async def __call__(self, request: HandshakeRequest) -> Principal | Refusal | _Pending:

        if request.token is None:
            return PENDING if self.first_message else Refusal(401, "token required")
        try:
            return self.verify(request.token)
        except AuthenticationError as exc:
            return Refusal(401, str(exc))


def _string_list(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise AuthenticationError("permissions must be lists of topic patterns")
    return tuple(str(v) for v in value)


def seconds_until(expires_at: float) -> float:
    """Seconds from now until Unix time *expires_at* (negative when past)."""
    return expires_at - time.time()
