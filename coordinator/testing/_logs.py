"""The library's log events, captured for assertions."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from coordinator._logging import LOGGER_NAME, fields_of

__all__ = ["capture_logs"]


@contextlib.contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect every event of the ``coordinator`` loggers at ``level`` or above while open.

    Each is a dict like ``structlog.testing.capture_logs`` gives:
    ``{"event": "leadership_acquired", "log_level": "info", "group": ..., ...}``.
    """
    captured: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append({**fields_of(record), "log_level": record.levelname.lower()})

    logger = logging.getLogger(LOGGER_NAME)
    handler = Collect(level)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, logger.getEffectiveLevel()))
    try:
        yield captured
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
