"""How errors and callables are named in log lines: one spelling everywhere."""

from __future__ import annotations

__all__ = ["describe_error", "name_of"]


def describe_error(error: BaseException) -> str:
    """``Type: message``, followed by the cause's, so that one log line says why."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(parts) < 3:
        name = type(current).__name__
        parts.append(f"{name}: {current}" if str(current) else name)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return " (caused by ".join(parts) + ")" * (len(parts) - 1)


def name_of(func: object) -> str:
    """A callback's or job's qualified name, or its repr when it has none."""
    return str(getattr(func, "__qualname__", repr(func)))
