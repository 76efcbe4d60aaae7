"""tickwire: real-time streaming over WebSockets for trading and game backends, on trio.

Imports: the package's modules; no logic lives here.
"""

from tickwire._version import __version__
from tickwire.auth import JWTAuth, Principal
from tickwire.broadcast import Hub, TopicConfig
from tickwire.config import KiB, Limits, MiB, ServerConfig
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
from tickwire.sansio.fanout import Overflow
from tickwire.sansio.table import Field, FieldType, Schema, TableView
from tickwire.server import HandshakeRequest, Refusal, Server, open_server, serve
from tickwire.sim import ENTITY_SCHEMA, QUOTE_SCHEMA, GameWorld, MarketFeed, quote_row

__all__ = [
    "ENTITY_SCHEMA",
    "QUOTE_SCHEMA",
    "CompressionConfig",
    "ConnectionClosed",
    "DecodeError",
    "Dictionary",
    "Field",
    "FieldType",
    "GameWorld",
    "HandshakeRequest",
    "Hub",
    "JWTAuth",
    "KiB",
    "Limits",
    "LocalProtocolError",
    "MarketFeed",
    "MessageTooBig",
    "MiB",
    "NegotiationError",
    "Overflow",
    "Principal",
    "ProtocolError",
    "Refusal",
    "RemoteProtocolError",
    "Schema",
    "Server",
    "ServerConfig",
    "SlowConsumer",
    "TableView",
    "TickwireError",
    "TopicConfig",
    "UnknownDictionary",
    "__version__",
    "open_server",
    "quote_row",
    "serve",
]
