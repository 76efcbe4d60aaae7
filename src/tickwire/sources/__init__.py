"""Topics fed from message brokers: at least once, published once, with backpressure.

Imports: tickwire.sources.bridge, tickwire.sources.mapping (the broker adapters are
imported by name: ``tickwire.sources.redis_streams``).

A :class:`Bridge` runs sources into a hub through a :class:`Routing` (docs/sources.md).
"""

from tickwire.sources.bridge import (
    Bridge,
    Dead,
    Delivery,
    Handler,
    Published,
    Source,
    SourceStatistics,
)
from tickwire.sources.mapping import DeadLetter, Route, Routing, ToStream, ToTable

__all__ = [
    "Bridge",
    "Dead",
    "DeadLetter",
    "Delivery",
    "Handler",
    "Published",
    "Route",
    "Routing",
    "Source",
    "SourceStatistics",
    "ToStream",
    "ToTable",
]
