"""Hypothesis strategies for msgpack values and tickwire events."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

keys = st.text(max_size=10) | st.integers(min_value=-1000, max_value=1000)


def _values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | floats
        | st.text(max_size=40)
        | st.binary(max_size=40)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=6) | st.dictionaries(keys, children, max_size=6)
        ),
        max_leaves=30,
    )


# NaN is left out only because NaN != NaN would fail the equality checks.
msgpack_values = _values(st.floats(allow_nan=False))
# JSON has no infinities (§4.12).
json_values = _values(st.floats(allow_nan=False, allow_infinity=False))
uint = st.integers(min_value=0, max_value=2**64 - 1)
