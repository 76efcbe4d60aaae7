"""tickwire: real-time streaming over WebSockets for trading and game backends, on trio.

Imports: the package's modules; no logic lives here.
"""

from tickwire._version import __version__
from tickwire.auth import JWTAuth, Principal
from tickwire.broadcast import (
    DuplicateKey,
    Hub,
    Listener,
    Overloaded,
    Published,
    TooManyTopics,
    TopicConfig,
)
from tickwire.client import (
    Client,
    ClientConfig,
    ClientStatistics,
    Lost,
    Message,
    PublishResult,
    Reconnect,
    Subscription,
    TableChanged,
    TableReset,
    Update,
    open_client,
)
from tickwire.config import KiB, Limits, MiB, ServerConfig
from tickwire.errors import (
    BackplaneUnavailable,
    ConnectionClosed,
    ConnectionRefused,
    DecodeError,
    InvalidValue,
    LocalProtocolError,
    MessageTooBig,
    NegotiationError,
    ProtocolError,
    PublishError,
    RemoteProtocolError,
    SlowConsumer,
    SubscriptionError,
    TickwireError,
    UnknownDictionary,
    ValueTooLarge,
)
from tickwire.metrics import MetricsEndpoint, serve_metrics
from tickwire.sansio.compression import CompressionConfig, Dictionary
from tickwire.sansio.fanout import Overflow
from tickwire.sansio.table import Field, FieldType, Schema, TableView
from tickwire.schemas import (
    CRYPTO_QUOTE_SCHEMA,
    EQUITY_QUOTE_SCHEMA,
    FX_QUOTE_SCHEMA,
    GAME_ENTITY_SCHEMA,
)
from tickwire.server import HandshakeRequest, Refusal, Server, open_server, serve
from tickwire.sim import ENTITY_SCHEMA, QUOTE_SCHEMA, GameWorld, MarketFeed, quote_row
from tickwire.statistics import ServerStatistics

__all__ = [
    "CRYPTO_QUOTE_SCHEMA",
    "ENTITY_SCHEMA",
    "EQUITY_QUOTE_SCHEMA",
    "FX_QUOTE_SCHEMA",
    "GAME_ENTITY_SCHEMA",
    "QUOTE_SCHEMA",
    "BackplaneUnavailable",
    "Client",
    "ClientConfig",
    "ClientStatistics",
    "CompressionConfig",
    "ConnectionClosed",
    "ConnectionRefused",
    "DecodeError",
    "Dictionary",
    "DuplicateKey",
    "Field",
    "FieldType",
    "GameWorld",
    "HandshakeRequest",
    "Hub",
    "InvalidValue",
    "JWTAuth",
    "KiB",
    "Limits",
    "Listener",
    "LocalProtocolError",
    "Lost",
    "MarketFeed",
    "Message",
    "MessageTooBig",
    "MetricsEndpoint",
    "MiB",
    "NegotiationError",
    "Overflow",
    "Overloaded",
    "Principal",
    "ProtocolError",
    "PublishError",
    "PublishResult",
    "Published",
    "Reconnect",
    "Refusal",
    "RemoteProtocolError",
    "Schema",
    "Server",
    "ServerConfig",
    "ServerStatistics",
    "SlowConsumer",
    "Subscription",
    "SubscriptionError",
    "TableChanged",
    "TableReset",
    "TableView",
    "TickwireError",
    "TooManyTopics",
    "TopicConfig",
    "UnknownDictionary",
    "Update",
    "ValueTooLarge",
    "__version__",
    "open_client",
    "open_server",
    "quote_row",
    "serve",
    "serve_metrics",
]
