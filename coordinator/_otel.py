"""Quiet with OpenTelemetry: the coordinator's own database traffic is never traced.

Instrumentation libraries (``opentelemetry-instrumentation-asyncpg`` and the
rest) do nothing while the context carries OpenTelemetry's
suppress-instrumentation key. The coordinator's start, stop and jobs run
under it, so the tasks they create (the electors, the shared session) inherit
it: an idle coordinator's heartbeats, lock waits and monitor queries make no
spans. The application's code that the coordinator calls (``on_elected`` and
``on_demoted`` callbacks, a scheduler the coordinator starts) runs with the
key cleared again, so that its own queries are traced as usual.

Without ``opentelemetry-api`` installed, both are no-ops.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

__all__ = ["app_context", "untraced"]

P = ParamSpec("P")
T = TypeVar("T")

try:
    from opentelemetry import context as _context

    # The key every instrumentation checks (opentelemetry.instrumentation.utils
    # .is_instrumentation_enabled); the API keeps it in opentelemetry.context.
    _SUPPRESS = _context._SUPPRESS_INSTRUMENTATION_KEY
except ImportError:  # the otel extra is not installed
    _context = None  # type: ignore[assignment]


@contextlib.contextmanager
def _suppressed(value: bool) -> Iterator[None]:
    if _context is None:
        yield
        return
    token = _context.attach(_context.set_value(_SUPPRESS, value))
    try:
        yield
    finally:
        _context.detach(token)


def untraced(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run the coroutine (and every task it starts) with instrumentation suppressed."""

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with _suppressed(True):
            return await method(*args, **kwargs)

    return run


def app_context() -> contextlib.AbstractContextManager[None]:
    """Around the application's own code, called from the coordinator's: traced again."""
    return _suppressed(False)
