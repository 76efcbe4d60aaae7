"""Exception groups at the edges: one error out of a nursery is raised as itself.

Imports: stdlib, trio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio

__all__ = ["only", "unwrapped"]


def only(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested groups, or the group itself when there are more."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else group


@contextlib.contextmanager
def unwrapped() -> Iterator[None]:
    """Re-raise a group holding a single exception (not a Cancelled) as that exception, as
    trio-websocket's ``open_websocket`` does: callers of a context manager that happens to
    hold a nursery see their own error, not a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = only(group)
        if leaf is group or isinstance(leaf, trio.Cancelled):
            raise
        raise leaf from None
