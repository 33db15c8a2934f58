"""The library logs through stdlib logging under ``coordinator`` and never configures output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import structlog

from coordinator import HeartbeatDone, Signal
from helpers import coordinator

GROUP = "scheduler"
SLACK = 10.0


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def from_coordinator(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name.split(".")[0] == "coordinator"]

    def job_runs_of_coordinator(self) -> list[logging.LogRecord]:
        """APScheduler's lines about each run of the coordinator's heartbeat and monitor."""
        return [
            r
            for r in self.records
            if r.name.startswith("apscheduler.executors") and "coordinator." in r.getMessage()
        ]


@pytest.fixture
def app_log() -> Iterator[Collect]:
    """An application's stdlib logging at INFO: one handler on the root logger."""
    root = logging.getLogger()
    handler = Collect()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("coordinator").setLevel(logging.NOTSET)


async def elect_and_resign(dsn: str) -> None:
    async with coordinator(dsn, "app", GROUP) as coord:
        await coord.group(GROUP).wait_elected(SLACK)
        await coord.group(GROUP).resign()


async def test_events_reach_the_application_log_as_records_with_their_fields(
    dsn: str, app_log: Collect, capfd: pytest.CaptureFixture[str]
) -> None:
    await elect_and_resign(dsn)
    acquired = [
        r for r in app_log.from_coordinator() if getattr(r, "event", None) == "leadership_acquired"
    ]
    assert len(acquired) == 1
    record = acquired[0]
    assert record.levelno == logging.INFO
    assert (record.group, record.term, record.instance_id) == (GROUP, 1, "app")  # type: ignore[attr-defined]
    assert record.getMessage().startswith(
        f"leadership_acquired group={GROUP} instance_id=app term=1"
    )
    assert record.funcName == "_log_acquired", "the record names the library's code"
    # The library prints nothing itself: only the application's handlers write anywhere.
    assert capfd.readouterr() == ("", "")


async def test_an_app_that_silences_the_coordinator_logger_sees_none_of_its_lines(
    dsn: str, app_log: Collect, capfd: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("coordinator").setLevel(logging.CRITICAL)
    await elect_and_resign(dsn)
    assert app_log.from_coordinator() == []
    assert capfd.readouterr() == ("", "")


async def test_an_app_that_silences_the_coordinator_logger_sees_no_line_about_its_jobs(
    dsn: str, app_log: Collect
) -> None:
    logging.getLogger("coordinator").setLevel(logging.CRITICAL)
    beats: list[Signal] = []
    enough = asyncio.Event()

    def count(signal: Signal) -> None:
        if isinstance(signal, HeartbeatDone):
            beats.append(signal)
            if len(beats) >= 4:  # the start-up beat, then at least two finished job runs
                enough.set()

    coord = coordinator(dsn, "app", GROUP)
    coord.add_listener(count)
    async with coord:
        await asyncio.wait_for(enough.wait(), SLACK)
    assert app_log.job_runs_of_coordinator() == []


async def test_an_app_can_redirect_every_line_of_the_coordinator(
    dsn: str, app_log: Collect
) -> None:
    own = Collect()
    library = logging.getLogger("coordinator")
    library.addHandler(own)
    library.propagate = False
    try:
        await elect_and_resign(dsn)
    finally:
        library.removeHandler(own)
        library.propagate = True
    events = [getattr(r, "event", None) for r in own.records]
    assert "leadership_acquired" in events
    assert "leadership_released" in events
    assert app_log.from_coordinator() == []


async def test_an_app_that_configured_structlog_gets_the_fields_through_its_formatter(
    dsn: str, app_log: Collect
) -> None:
    """structlog's stdlib integration: ExtraAdder turns the record's fields into keys again."""
    rendered: list[dict[str, object]] = []

    def keep(_: object, __: str, event_dict: structlog.typing.EventDict) -> str:
        rendered.append(dict(event_dict))
        return ""

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, keep],
    )
    app_log.setFormatter(formatter)
    await elect_and_resign(dsn)
    for record in app_log.from_coordinator():
        app_log.format(record)
    # (pytest's own handler formats the record first, which sets record.message.)
    acquired = [
        {k: v for k, v in e.items() if k != "message"}
        for e in rendered
        if e["event"] == "leadership_acquired"
    ]
    assert acquired == [
        {
            "event": "leadership_acquired",
            "group": GROUP,
            "instance_id": "app",
            "term": 1,
            "backend_pid": acquired[0]["backend_pid"],
        }
    ]
