"""Logging: the library emits through stdlib ``logging``; only the command line sets output.

Every module logs through :func:`get_logger`, a structlog bound logger whose
processors end in the stdlib logger of the same name, under ``coordinator``.
A fixed event name and key/value fields become one ``LogRecord``: its message
reads ``leadership_acquired group=jobs term=3``, and the fields ride along as
record attributes (``record.event``, ``record.term``: what ``extra=`` sets),
so that ``structlog.stdlib.ExtraAdder`` or any structured formatter keeps them.
Nothing here depends on structlog's global configuration, so an application's
``structlog.configure()`` neither breaks nor receives these events, and
``logging.getLogger("coordinator")`` silences, filters or redirects every one.

:func:`configure_logging` is for ``coordinator run`` and the other commands:
one JSON object or one aligned line per event on stdout.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import IO, Any, Literal

import structlog

__all__ = ["LOGGER_NAME", "LogFormat", "configure_logging", "get_logger"]

LogFormat = Literal["json", "console"]

#: The parent of every logger of the library.
LOGGER_NAME = "coordinator"

#: What makes a value need quotes in the message: str.isspace's characters.
_SPACE = re.compile(r"\s")

#: LogRecord's own attributes: a field of that name is stored with a trailing underscore.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def get_logger(name: str = LOGGER_NAME, **context: Any) -> structlog.stdlib.BoundLogger:
    """A logger for ``name`` (``coordinator`` or below) that writes stdlib records."""
    return structlog.stdlib.BoundLogger(
        logging.getLogger(name), [structlog.stdlib.filter_by_level, _to_record], context
    )


def _to_record(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The event as ``logger.<level>(message, extra=fields)`` arguments."""
    fields = dict(event_dict)
    event = str(fields.pop("event", ""))
    exc_info = fields.pop("exc_info", None)
    message = " ".join([event, *(f"{key}={_plain(value)}" for key, value in fields.items())])
    extra = {"event": event}
    extra.update({f"{key}_" if key in _RESERVED else key: value for key, value in fields.items()})
    kwargs: dict[str, Any] = {"extra": extra}
    if exc_info:
        kwargs["exc_info"] = exc_info
    # Point funcName and lineno at the caller of log.info(), not at structlog.
    kwargs["stacklevel"] = 4
    # No arguments: logging never applies "%" formatting to the message.
    return (message,), kwargs


def _plain(value: Any) -> str:
    text = str(value)
    return repr(text) if not text or _SPACE.search(text) else text


def configure_logging(
    log_format: LogFormat, *, level: int = logging.INFO, stream: IO[str] | None = None
) -> None:
    """The coordinator's events on ``stream`` (stdout): JSON for machines, aligned text for people.

    Third-party loggers (APScheduler, asyncpg) go to stderr at WARNING, so the
    stream carries only the coordinator's own events. Calling it again
    replaces the earlier set-up.
    """
    out = sys.stdout if stream is None else stream
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.ExtraAdder(),
                _restore_reserved,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _restore_reserved(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Give fields stored as ``name_`` (a LogRecord attribute) their own name back."""
    for key in [k for k in event_dict if k.endswith("_") and k[:-1] in _RESERVED]:
        event_dict[key[:-1]] = event_dict.pop(key)
    return event_dict


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """An event's name and fields back from the record :func:`get_logger` wrote."""
    fields = {key: value for key, value in vars(record).items() if key not in _RESERVED}
    return dict(_restore_reserved(None, "", fields))
