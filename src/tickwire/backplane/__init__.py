"""Scale out: many tickwire processes sharing every topic through Redis (docs/scaling.md).

Imports: tickwire.backplane.redis (coredis, trio, tickwire.broadcast).

Install with ``pip install 'tickwire[redis]'``.
"""

from tickwire.backplane.redis import (
    BackplaneStatistics,
    RedisBackplane,
    open_publisher,
)

__all__ = ["BackplaneStatistics", "RedisBackplane", "open_publisher"]
