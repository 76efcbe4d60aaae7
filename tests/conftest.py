"""What every test process shares."""

from __future__ import annotations

import signal


def pytest_configure() -> None:
    """Ctrl+C reaches the servers the tests start. A shell's background job (``.ci/run &``
    in a script) starts with SIGINT ignored, an ignore every child inherits across exec,
    and a ``tickwire serve`` that ignores the SIGINT a test sends never shuts down. A
    Python handler is not inherited: with one here, each child starts with the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
