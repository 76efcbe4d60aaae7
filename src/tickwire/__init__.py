"""tickwire: real-time streaming over WebSockets for trading and game backends, on trio.

Imports: the package's modules; no logic lives here.
"""

from tickwire._version import __version__
from tickwire.config import KiB, Limits, MiB
from tickwire.errors import (
    ConnectionClosed,
    DecodeError,
    LocalProtocolError,
    MessageTooBig,
    NegotiationError,
    ProtocolError,
    RemoteProtocolError,
    SlowConsumer,
    TickwireError,
    UnknownDictionary,
)
from tickwire.sansio.compression import CompressionConfig, Dictionary
from tickwire.sim import GameWorld, MarketFeed

__all__ = [
    "CompressionConfig",
    "ConnectionClosed",
    "DecodeError",
    "Dictionary",
    "GameWorld",
    "KiB",
    "Limits",
    "LocalProtocolError",
    "MarketFeed",
    "MessageTooBig",
    "MiB",
    "NegotiationError",
    "ProtocolError",
    "RemoteProtocolError",
    "SlowConsumer",
    "TickwireError",
    "UnknownDictionary",
    "__version__",
]
