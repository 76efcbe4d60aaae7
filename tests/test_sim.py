"""The simulated feeds are seeded, skewed and shaped like the real thing."""

from __future__ import annotations

import collections
import itertools

import pytest

from tickwire.sim import GameWorld, MarketFeed


def test_market_is_repeatable_per_seed() -> None:
    assert MarketFeed(seed=5).take(200) == MarketFeed(seed=5).take(200)
    assert MarketFeed(seed=5).take(200) != MarketFeed(seed=6).take(200)


def test_market_activity_is_skewed() -> None:
    feed = MarketFeed(seed=1, symbols=500)
    counts = collections.Counter(u["symbol"] for u in feed.take(20_000))
    ranked = [n for _, n in counts.most_common()]
    assert len(counts) > 250  # most symbols trade
    assert ranked[0] > 20 * ranked[len(ranked) // 2]  # the busiest dwarfs the median


def test_market_quotes_and_trades() -> None:
    updates = MarketFeed(seed=2).take(5000)
    kinds = collections.Counter(u["type"] for u in updates)
    assert 0.05 < kinds["trade"] / len(updates) < 0.15
    stamps = [u["ts"] for u in updates]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    for u in updates:
        if u["type"] == "quote":
            assert u["ask"] > u["bid"] > 0
            assert u["bid_size"] % 100 == 0
            tick = 0.01 if u["bid"] >= 1 else 0.0001
            assert abs(u["bid"] / tick - round(u["bid"] / tick)) < 1e-6  # whole ticks
        else:
            assert u["side"] in "BS"


def test_market_batches_follow_the_window() -> None:
    feed = MarketFeed(seed=1, rate=5000)
    batches = [next(b) for b in [feed.batches(0.010)] for _ in range(50)]
    sizes = [len(b) for b in batches]
    assert 35 < sum(sizes) / len(sizes) < 65  # 5,000/s in 10 ms windows: about 50
    for batch in batches:
        assert batch[-1]["ts"] - batch[0]["ts"] < 10_000_000


@pytest.mark.parametrize("rate", [5.0, 2000.0])
def test_market_windows_end_after_their_updates(rate: float) -> None:
    # At 5 updates/s most 10 ms windows are empty: a window's end comes from the
    # timestamps, not from counting batches (which would run ahead of them). The ticker
    # demo sends each batch when its window ends, so none goes out before its time.
    window = 0.010
    start_ns = 1_800_000_000_000_000_000
    feed = MarketFeed(seed=3, symbols=20, rate=rate, start_ns=start_ns)
    last = 0.0
    for ends_ns, batch in itertools.islice(feed.windows(window), 300):
        ends = (ends_ns - start_ns) / 1e9
        assert ends > last
        stamps = [(update["ts"] - start_ns) / 1e9 for update in batch]
        # every quote is sent once its timestamp has passed, within the window it is in
        assert all(ends - window <= stamp < ends for stamp in stamps), (ends, stamps)
        last = ends
    assert last > 300 * window if rate < 100 else last == pytest.approx(300 * window)


def test_game_world_keeps_its_population_and_sends_only_changes() -> None:
    world = GameWorld(seed=1, entities=200, tick_rate=20)
    state = {e["id"]: e for e in world.snapshot()}
    assert len(state) == 200
    despawns = spawns = 0
    for _ in range(200):
        tick = world.tick()
        for entity in tick.spawned:
            state[entity["id"]] = dict(entity)
        for change in tick.updated:
            assert set(change) - {"id"} <= {"x", "y", "heading", "hp", "state"}
            state[change["id"]].update(change)
        for eid in tick.despawned:
            del state[eid]
        despawns += len(tick.despawned)
        spawns += len(tick.spawned)
    # Applying the deltas reproduces the world exactly.
    assert state == {e["id"]: e for e in world.snapshot()}
    assert spawns > 20
    assert despawns > 20
    players_and_npcs = [e for e in state.values() if e["kind"] != "projectile"]
    assert len(players_and_npcs) == 200


@pytest.mark.parametrize("rate", [20.0, 60.0])
def test_game_tick_time(rate: float) -> None:
    world = GameWorld(seed=1, entities=10, tick_rate=rate)
    t1, t2 = world.tick().time_ns, world.tick().time_ns
    assert t2 - t1 == pytest.approx(1e9 / rate, abs=2)
