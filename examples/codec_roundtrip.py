"""The tickwire/2 codec without any I/O: negotiate, encode, compress with a dictionary, decode.

Shows: the sans-I/O core (tickwire.sansio) that the server and client are built on. A server
Session encodes market-feed quotes; a client Session decodes them, first without a
dictionary, then with one trained on other traffic and fetched as a client would.

Try it:  python examples/codec_roundtrip.py
"""

from __future__ import annotations

from tickwire import MarketFeed
from tickwire.sansio import (
    CompressionConfig,
    Data,
    Dictionary,
    Role,
    Session,
    client_offer,
    encode_message,
    select,
)


def main() -> None:
    # The handshake: the client offers, the server selects (docs/PROTOCOL.md §2).
    negotiated = select(client_offer())
    print(f"negotiated {negotiated.subprotocol}")

    # Train a dictionary on yesterday's traffic (another seed), never on what we measure.
    training = [encode_message(Data(1, i, q)) for i, q in enumerate(MarketFeed(seed=2).take(2000))]
    dictionary = Dictionary.train(
        [bytes(m)[1:] for m in training if isinstance(m, bytes)], dict_id=1
    )

    plain_server = Session(Role.SERVER, negotiated)
    dict_server = Session(
        Role.SERVER, negotiated, compression=CompressionConfig(min_bytes=0, dictionary=dictionary)
    )
    client = Session(Role.CLIENT, negotiated)
    # What HELLO offers and DICT_DATA delivers (§5.3), done by hand here.
    client.dictionaries.offered([dictionary.info])
    client.dictionaries.load(dictionary.dict_id, dictionary.data)

    quotes = MarketFeed(seed=1).take(1000)
    totals = {"plain": 0, "dictionary": 0}
    for offset, quote in enumerate(quotes, start=1):
        for name, server in (("plain", plain_server), ("dictionary", dict_server)):
            message = server.send(Data(7, offset, quote))
            totals[name] += len(message)
            client.receive_message(message)
            (event,) = client.events_received()
            assert event == Data(7, offset, quote)
    for name, total in totals.items():
        print(f"{name:>10}: {total / len(quotes):5.1f} bytes per quote (tickwire header included)")


if __name__ == "__main__":
    main()
