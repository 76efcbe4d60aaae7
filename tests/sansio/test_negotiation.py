"""§2: subprotocol negotiation."""

from __future__ import annotations

import pytest

from tickwire.errors import NegotiationError
from tickwire.sansio.negotiation import (
    JSON,
    MSGPACK,
    MSGPACK_ZSTD,
    Codec,
    Negotiated,
    NegotiationPolicy,
    client_offer,
    parse_offer,
    parse_selected,
    select,
    token_from_offer,
)


def test_2_1_tokens() -> None:
    assert Negotiated.of(MSGPACK_ZSTD) == Negotiated("tickwire.v2+zstd", Codec.MSGPACK, True)
    assert Negotiated.of(MSGPACK) == Negotiated("tickwire.v2", Codec.MSGPACK, False)
    assert Negotiated.of(JSON) == Negotiated("tickwire.v2.json", Codec.JSON, False)


def test_2_2_server_preference_wins() -> None:
    assert select([JSON, MSGPACK, MSGPACK_ZSTD]).subprotocol == MSGPACK_ZSTD
    policy = NegotiationPolicy(preference=(JSON, MSGPACK))
    assert select([MSGPACK, JSON], policy).subprotocol == JSON


def test_2_2_policy_can_disable_compression_and_json() -> None:
    no_zstd = NegotiationPolicy(compression=False)
    assert select([MSGPACK_ZSTD, MSGPACK], no_zstd).subprotocol == MSGPACK
    with pytest.raises(NegotiationError, match=r"tickwire\.v2 tickwire\.v2\.json"):
        select([MSGPACK_ZSTD], no_zstd)
    with pytest.raises(NegotiationError):
        select([JSON], NegotiationPolicy(json=False))


def test_2_2_nothing_in_common() -> None:
    with pytest.raises(NegotiationError, match="no common subprotocol"):
        select(["graphql-ws", "tickwire.v3"])
    with pytest.raises(NegotiationError):
        select([])


def test_2_3_auth_offers_are_never_selected() -> None:
    offer = client_offer(token="abc.def-ghi_jkl")
    assert offer == [MSGPACK_ZSTD, MSGPACK, "tickwire.auth.abc.def-ghi_jkl"]
    assert token_from_offer(offer) == "abc.def-ghi_jkl"
    assert token_from_offer([MSGPACK]) is None
    with pytest.raises(NegotiationError):
        select(["tickwire.auth.tickwire.v2"])


@pytest.mark.parametrize("token", ["", "has space", "a,b", 'quote"', "é"])
def test_2_3_tokens_must_be_http_tokens(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        client_offer(token=token)


def test_client_offer_variants() -> None:
    assert client_offer(compression=False, json=True) == [MSGPACK, JSON]


def test_parse_offer_splits_header_values() -> None:
    assert parse_offer(["tickwire.v2+zstd, tickwire.v2", " tickwire.v2.json "]) == [
        MSGPACK_ZSTD,
        MSGPACK,
        JSON,
    ]


def test_client_checks_the_servers_choice() -> None:
    offer = client_offer()
    assert parse_selected(MSGPACK, offer).compression is False
    with pytest.raises(NegotiationError, match="no subprotocol"):
        parse_selected(None, offer)
    with pytest.raises(NegotiationError, match="not offered"):
        parse_selected(JSON, offer)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="unknown"):
        NegotiationPolicy(preference=("tickwire.v9",))
    with pytest.raises(NegotiationError):
        Negotiated.of("nope")
