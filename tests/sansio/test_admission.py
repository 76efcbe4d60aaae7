"""Token buckets, per-connection rate limits, admission control and the Origin allowlist."""

from __future__ import annotations

import pytest

from tickwire.sansio.admission import (
    AdmissionControl,
    RateLimiter,
    RateVerdict,
    Throttle,
    TokenBucket,
    client_address,
    origin_allowed,
    parse_networks,
)


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert all(bucket.take(0.0) for _ in range(5))
    assert not bucket.take(0.0)
    assert bucket.wait_time(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert bucket.take(100.0, 5)  # capped at the burst
    assert not bucket.take(100.0)


def test_rate_limiter_warns_then_drops_then_closes() -> None:
    limiter = RateLimiter(messages_per_second=10, bytes_per_second=1e6, max_strikes=3)
    verdicts = [limiter.check(0.0, 10) for _ in range(25)]
    assert verdicts[:20] == [RateVerdict.OK] * 20  # the 2-second burst
    assert verdicts[20:] == [
        RateVerdict.WARN,
        RateVerdict.DROP,
        RateVerdict.DROP,
        RateVerdict.CLOSE,
        RateVerdict.CLOSE,
    ]


def test_rate_limiter_counts_bytes_and_forgives_a_pause() -> None:
    limiter = RateLimiter(messages_per_second=1000, bytes_per_second=1000, burst_seconds=1)
    assert limiter.check(0.0, 900) is RateVerdict.OK
    assert limiter.check(0.0, 200) is RateVerdict.WARN
    assert limiter.check(1.0, 200) is RateVerdict.OK  # refilled; strikes reset
    assert limiter.check(1.0, 5000) is RateVerdict.WARN


def test_admission_limits() -> None:
    control = AdmissionControl(max_connections=3, max_per_address=2, new_per_second=100)
    for address in ("10.0.0.1", "10.0.0.1"):
        assert control.admit(address, 0).admitted
        assert control.establish().admitted
    refused = control.admit("10.0.0.1", 0)
    assert not refused.admitted
    assert refused.reason == "too many connections from this address"
    assert control.admit("10.0.0.2", 0).admitted
    assert control.establish().admitted
    full = control.admit("10.0.0.3", 0)
    assert (full.admitted, full.reason, full.retry_after) == (False, "server full", 1.0)
    control.release("10.0.0.1")
    assert control.open == 2
    assert control.admit("10.0.0.1", 0).admitted


def test_handshakes_in_progress_hold_no_connection_slot() -> None:
    # Slowloris: handshakes that never finish fill the handshake slots, not the server.
    control = AdmissionControl(
        max_connections=2, max_per_address=100, new_per_second=100, max_handshakes=3
    )
    for _ in range(3):
        assert control.admit("10.0.0.9", 0).admitted  # slow: never established
    assert (control.handshaking, control.open) == (3, 0)
    refused = control.admit("10.0.0.1", 0)
    assert (refused.admitted, refused.reason) == (False, "too many handshakes in progress")
    control.release("10.0.0.9", established=False)  # one slow handshake timed out
    assert control.admit("10.0.0.1", 0).admitted
    assert control.establish().admitted
    assert control.open == 1
    # A handshake that completes when the server is full is refused then, and released
    # as a handshake.
    control.release("10.0.0.9", established=False)
    control.release("10.0.0.9", established=False)
    assert control.admit("10.0.0.2", 0).admitted
    assert control.admit("10.0.0.3", 0).admitted
    assert control.establish().admitted
    assert control.establish().reason == "server full"
    control.release("10.0.0.3", established=False)
    assert (control.handshaking, control.open) == (0, 2)


def test_admission_new_connection_rate() -> None:
    control = AdmissionControl(
        max_connections=100, max_per_address=100, new_per_second=2, retry_after=0.1
    )
    assert control.admit("a", 0).admitted
    assert control.admit("a", 0).admitted
    refused = control.admit("a", 0)
    assert (refused.admitted, refused.reason) == (False, "too many new connections")
    assert refused.retry_after == pytest.approx(0.5)
    assert control.admit("a", 0.5).admitted


ALLOWED = ["https://app.example.com", "https://*.trading.example", "http://localhost:8080"]


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("http://app.example.com", False),  # scheme matters
        ("https://app.example.com:8443", False),  # port matters
        ("https://evil.com", False),
        ("https://app.example.com.evil.com", False),
        ("https://desk.trading.example", True),
        ("https://a.b.trading.example", True),
        ("https://trading.example", False),  # the wildcard needs a subdomain
        ("https://eviltrading.example", False),
        ("http://localhost:8080", True),
        ("http://localhost", False),
        ("null", False),
        ("not a url", False),
    ],
)
def test_origin_allowlist(origin: str, ok: bool) -> None:
    assert origin_allowed(origin, ALLOWED, allow_missing=False) is ok


def test_origin_missing_and_open() -> None:
    assert origin_allowed(None, ALLOWED, allow_missing=True)
    assert not origin_allowed(None, ALLOWED, allow_missing=False)
    assert origin_allowed("https://any.where", None, allow_missing=False)
    assert origin_allowed("https://any.where", ["*"], allow_missing=False)


def test_a_throttle_may_be_overdrawn_and_the_debt_is_a_delay() -> None:
    throttle = Throttle(rate=1000, burst=500)
    assert throttle.allows(0.0, 500)
    assert not throttle.allows(0.0, 501)
    throttle.spend(0.0, 1500)  # one big frame: never split
    assert throttle.available(0.0) == -1000
    assert throttle.delay(0.0) == pytest.approx(1.0)
    assert throttle.delay(0.5) == pytest.approx(0.5)
    assert throttle.delay(1.0) == 0
    assert throttle.available(10.0) == 500  # refills up to the burst only
    throttle.spend(10.0, 500 + 1e-9)  # a rounding error's worth of debt is none
    assert throttle.delay(10.0) == 0


def test_the_client_behind_a_trusted_proxy_is_read_from_the_right() -> None:
    trusted = parse_networks(["10.0.0.0/8", "::1"])
    # A trusted proxy names the client; what the client wrote itself (left) is not believed.
    assert client_address("10.0.0.5", "203.0.113.9, 198.51.100.7", trusted) == "198.51.100.7"
    assert client_address("10.0.0.5", "198.51.100.7, 10.0.0.9", trusted) == "198.51.100.7"
    assert client_address("::1", "2001:db8::1", trusted) == "2001:db8::1"
    # An untrusted peer is the client, whatever it says.
    assert client_address("192.0.2.1", "198.51.100.7", trusted) == "192.0.2.1"
    assert client_address("10.0.0.5", None, trusted) == "10.0.0.5"
    assert client_address("10.0.0.5", "not-an-ip", trusted) == "10.0.0.5"
    assert client_address("10.0.0.5", "198.51.100.7", ()) == "10.0.0.5"
    with pytest.raises(ValueError, match="not an IP address or network: 'nginx'"):
        parse_networks(["nginx"])


def test_readdress_moves_the_count_to_the_client_within_its_limit() -> None:
    control = AdmissionControl(max_connections=10, max_per_address=1, new_per_second=100)
    assert control.admit("10.0.0.5", 0.0, per_address=False).admitted
    assert control.admit("10.0.0.5", 0.0, per_address=False).admitted  # a proxy: no limit
    assert control.establish().admitted
    assert control.establish().admitted
    assert control.readdress("10.0.0.5", "198.51.100.7").admitted
    refused = control.readdress("10.0.0.5", "198.51.100.7")  # that client's second
    assert not refused.admitted
    assert refused.reason == "too many connections from this address"
    assert control.open == 2
    control.release("198.51.100.7")
    control.release("10.0.0.5")
    assert control.open == 0
