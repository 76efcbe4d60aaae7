"""JWT verification, topic permissions, and the authentication flows of a connection."""

from __future__ import annotations

import functools
import time
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from wsproto.events import RejectConnection

from tests.helpers import RawClient, decode, encode, open_raw, start_memory_server
from tickwire.auth import PENDING, AuthenticationError, JWTAuth, Principal, pattern_covers
from tickwire.broadcast import Hub
from tickwire.config import ServerConfig
from tickwire.sansio import Ack, Auth, Subscribe
from tickwire.sansio.negotiation import MSGPACK
from tickwire.server import HandshakeRequest, Refusal, Server
from tickwire.testing import MemoryListener

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    claims.setdefault("sub", "ann")
    claims.setdefault("exp", int(time.time()) + 3600)
    return jwt.encode(claims, key, algorithm=algorithm)


UNSIGNED = jwt.encode({"sub": "x", "exp": 2**40}, None, algorithm="none")  # type: ignore[arg-type]
AUTH = JWTAuth(key=SECRET, audience="tickwire", issuer="https://id.example", leeway=5)


def good(**claims: Any) -> str:
    return token(aud="tickwire", iss="https://id.example", **claims)


def test_a_valid_token_gives_its_principal() -> None:
    principal = AUTH.verify(good(tickwire={"subscribe": ["quotes.*"], "publish": []}))
    assert principal.subject == "ann"
    assert principal.subscribe == ("quotes.*",)
    assert principal.publish == ()
    assert principal.expires_at is not None
    assert principal.allows("subscribe", "quotes.AAPL")
    assert principal.allows("subscribe", "quotes.*")
    assert not principal.allows("subscribe", "trades.AAPL")
    assert not principal.allows("publish", "quotes.AAPL")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (
            token(
                aud="tickwire", iss="https://id.example", key="another-secret-0123456789abcdefgh"
            ),
            "invalid token",
        ),
        (good(exp=int(time.time()) - 60), "token expired"),
        (good(nbf=int(time.time()) + 600), "token not yet valid"),
        (token(aud="other", iss="https://id.example"), "another audience"),
        (token(aud="tickwire", iss="https://evil.example"), "another issuer"),
        (
            jwt.encode({"sub": "ann", "aud": "tickwire", "iss": "https://id.example"}, SECRET),
            "lacks the 'exp' claim",
        ),
        (UNSIGNED, "invalid token"),
        ("not.a.jwt", "invalid token"),
        (good(tickwire={"subscribe": "quotes.*"}), "lists of topic patterns"),
        (good(tickwire={"subscribe": ["quotes.**"]}), "invalid permissions"),
    ],
)
def test_bad_tokens_are_refused(bad: str, reason: str) -> None:
    with pytest.raises(AuthenticationError, match=reason):
        AUTH.verify(bad)


def test_clock_skew_is_allowed_within_the_leeway() -> None:
    assert AUTH.verify(good(exp=int(time.time()) - 2)).subject == "ann"


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_key_algorithms(kind: str) -> None:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    auth = JWTAuth(key=public, algorithms=(kind,))
    assert auth.verify(token(private, kind)).subject == "ann"
    with pytest.raises(AuthenticationError):  # an HMAC token cannot pass for it
        auth.verify(token())


def test_none_is_never_an_algorithm() -> None:
    with pytest.raises(ValueError, match="algorithms"):
        JWTAuth(key=SECRET, algorithms=("none",))


@pytest.mark.parametrize(
    ("permission", "pattern", "ok"),
    [
        ("quotes.*", "quotes.AAPL", True),
        ("quotes.*", "quotes.*", True),
        ("quotes.AAPL", "quotes.*", False),
        ("quotes.*", "quotes.US.AAPL", False),
        ("*.AAPL", "trades.AAPL", True),
    ],
)
def test_pattern_covers(permission: str, pattern: str, ok: bool) -> None:
    assert pattern_covers(permission, pattern) is ok


async def test_handshake_outcomes() -> None:
    def request(tok: str | None) -> HandshakeRequest:
        return HandshakeRequest("/", (), (), "127.0.0.1", tok)

    assert isinstance(await AUTH(request(good())), Principal)
    assert await AUTH(request(None)) is PENDING
    refused = await AUTH(request("junk"))
    assert refused == Refusal(401, "invalid token")
    strict = JWTAuth(key=SECRET, first_message=False)
    assert await strict(request(None)) == Refusal(401, "token required")


# -- the flows on a connection (in memory, virtual time) --------------------------------


async def start(nursery: trio.Nursery, auth: JWTAuth, **config: Any) -> MemoryListener:
    _, listener = await start_memory_server(nursery, ServerConfig(**config), authenticate=auth)
    return listener


async def test_token_in_the_first_message(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        listener = await start(nursery, AUTH)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Auth(1, good(tickwire={"subscribe": ["quotes.*"]}))))
        assert [decode(m) for m in await raw.messages(1)] == [Ack(1)]
        await raw.send_bytes(encode(Subscribe(2, "orders.new")))
        error = decode((await raw.messages(1))[0])
        assert (error.request_id, error.code) == (2, 403)
        await raw.send_bytes(encode(Subscribe(3, "quotes.*")))
        assert decode((await raw.messages(1))[0]) == Ack(3)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (Subscribe(1, "quotes.*"), 4003),  # anything but AUTH first
        (Auth(1, "junk"), 4003),
        (None, 4005),  # nothing at all
    ],
)
async def test_first_message_failures(
    autojump_clock: trio.testing.MockClock, first: Any, code: int
) -> None:
    async with trio.open_nursery() as nursery:
        listener = await start(nursery, AUTH, auth_timeout=5)
        raw = await open_raw(listener)
        if first is not None:
            await raw.send_bytes(encode(first))
        assert await raw.close_code(answer_pings=True) == code
        nursery.cancel_scope.cancel()


async def test_expiry_closes_with_4001_unless_refreshed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = JWTAuth(key=SECRET, leeway=0)
    async with trio.open_nursery() as nursery:
        # No heartbeat in the way: this client does not answer pings while it waits.
        listener = await start(nursery, auth, heartbeat_interval=3600, heartbeat_timeout=10)
        short = f"Bearer {token(exp=int(time.time()) + 100)}".encode()
        raw = await open_raw(listener, extra_headers=[(b"Authorization", short)])
        await trio.sleep(60)  # virtual: the client does other things for a minute
        await raw.send_bytes(encode(Auth(1, token(exp=int(time.time()) + 300))))
        assert decode((await raw.messages(1))[0]) == Ack(1)
        begun = trio.current_time()
        assert await raw.close_code(answer_pings=True) == 4001
        # Closed at the refreshed expiry (about 300 s after the refresh), not the first.
        assert trio.current_time() - begun == pytest.approx(300, abs=2)
        nursery.cancel_scope.cancel()


async def test_a_refresh_for_someone_else_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        listener = await start(nursery, JWTAuth(key=SECRET))
        bearer = f"Bearer {token()}".encode()
        raw = await open_raw(listener, extra_headers=[(b"Authorization", bearer)])
        await raw.send_bytes(encode(Auth(1, token(sub="mallory"))))
        assert await raw.close_code() == 4003
        nursery.cancel_scope.cancel()


async def test_expired_token_at_the_handshake_is_401() -> None:
    listener = MemoryListener()
    server = Server(Hub(), authenticate=JWTAuth(key=SECRET, leeway=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(server.serve_listeners, [listener]))
        raw = RawClient(await listener.connect())
        expired = f"Bearer {token(exp=int(time.time()) - 10)}".encode()
        answer = await raw.handshake([MSGPACK], extra_headers=[(b"Authorization", expired)])
        assert isinstance(answer, RejectConnection)
        assert answer.status_code == 401
        nursery.cancel_scope.cancel()
