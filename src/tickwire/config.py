"""Frozen configuration objects shared by the core and the trio layer.

Imports: attrs, tickwire.errors. Sizes are in bytes (``KiB``/``MiB`` helpers), durations in
float seconds.
"""

from __future__ import annotations

from typing import Final

import attrs
from attrs.validators import ge, instance_of, le

__all__ = ["KiB", "Limits", "MiB"]

KiB: Final = 1024
MiB: Final = 1024 * KiB


_POSITIVE_INT: Final = (instance_of(int), ge(1))


@attrs.frozen(kw_only=True)
class Limits:
    """Hard limits on every incoming message, enforced before anything is allocated (§7).

    Attributes:
        max_message_bytes: largest WebSocket message accepted, as received (compressed).
        max_decompressed_bytes: largest body after zstd decompression.
        max_container_items: most elements in one msgpack array or map.
        max_containers: most arrays and maps in one message, all levels together; this is
            what keeps a message of empty arrays from growing 64-fold in memory.
        max_depth: deepest nesting of arrays and maps, the message's own array included.
    """

    max_message_bytes: int = attrs.field(default=1 * MiB, validator=_POSITIVE_INT)
    max_decompressed_bytes: int = attrs.field(default=4 * MiB, validator=_POSITIVE_INT)
    max_container_items: int = attrs.field(default=64 * KiB, validator=_POSITIVE_INT)
    max_containers: int = attrs.field(default=64 * KiB, validator=_POSITIVE_INT)
    max_depth: int = attrs.field(default=32, validator=[instance_of(int), ge(2), le(1000)])

    def __attrs_post_init__(self) -> None:
        if self.max_decompressed_bytes < self.max_message_bytes:
            raise ValueError("max_decompressed_bytes must be >= max_message_bytes")

    @classmethod
    def for_message_bytes(cls, max_message_bytes: int) -> Limits:
        """Limits derived from one figure: 4x for decompression, containers by size."""
        decompressed = 4 * max_message_bytes
        return cls(
            max_message_bytes=max_message_bytes,
            max_decompressed_bytes=decompressed,
            max_container_items=max(16, min(64 * KiB, decompressed // 16)),
            max_containers=max(16, min(64 * KiB, decompressed // 16)),
        )
