"""Leadership seen from outside: observe(), `coordinator watch` and `coordinator history`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coordinator import ConnectionFailed, LeadershipEvent, observe
from helpers import connected, coordinator, followers_ready, wait_until

GROUP = "jobs"
SLACK = 10.0

Change = tuple[str, int, str | None]  # kind, term, instance_id


class Observer:
    """``observe()`` consumed in the background, one change at a time."""

    def __init__(self, dsn: str, *groups: str) -> None:
        self._changes: asyncio.Queue[LeadershipEvent] = asyncio.Queue()
        self._task = asyncio.create_task(self._consume(dsn, groups))

    async def _consume(self, dsn: str, groups: tuple[str, ...]) -> None:
        async with contextlib.aclosing(observe(dsn, *groups, ping_interval=1.0)) as changes:
            async for change in changes:
                self._changes.put_nowait(change)

    async def next(self) -> Change:
        getting = asyncio.create_task(self._changes.get())
        done, _ = await asyncio.wait(
            {getting, self._task}, timeout=SLACK, return_when="FIRST_COMPLETED"
        )
        if getting not in done:
            getting.cancel()
            if self._task.done():
                self._task.result()
            raise AssertionError(f"observe() yielded nothing within {SLACK:g} s")
        event = getting.result()
        assert event.group == GROUP
        return (event.kind, event.term, event.instance_id)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Watch:
    """``coordinator watch --json`` as a real process."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self._process = process
        self._log = log

    @classmethod
    async def start(cls, dsn: str, log: Path, *groups: str) -> Watch:
        options = [arg for group in groups for arg in ("--group", group)]
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "coordinator", "watch", "--dsn", dsn, "--json"),
                *options,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        return cls(process, log)

    async def next(self) -> Change:
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), SLACK)
        except TimeoutError:
            line = b""
        if not line:
            raise AssertionError(f"watch printed nothing; its stderr:\n{self._log.read_text()}")
        event = json.loads(line)
        assert event["group"] == GROUP
        return (event["kind"], event["term"], event["instance_id"])

    async def stop(self) -> int:
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self._process.wait(), SLACK)


@contextlib.asynccontextmanager
async def watching(dsn: str, log: Path) -> AsyncIterator[tuple[Observer, Watch]]:
    observer = Observer(dsn, GROUP)
    watch = await Watch.start(dsn, log, GROUP)
    try:
        yield observer, watch
    finally:
        await observer.close()
        assert await watch.stop() == 0


async def history(dsn: str, *options: str) -> Any:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "coordinator", "history", "--dsn", dsn, *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in options else result.stdout


async def test_observe_and_watch_see_every_change_in_order_with_terms(
    dsn: str, wait: str, tmp_path: Path
) -> None:
    a, b = coordinator(dsn, "a", GROUP, wait=wait), coordinator(dsn, "b", GROUP, wait=wait)
    other = coordinator(dsn, "c", "other", wait=wait)  # changes of another group are not shown
    async with a, other:
        await a.group(GROUP).wait_elected(SLACK)
        async with watching(dsn, tmp_path / "watch.log") as (observer, watch):
            # Each first says who leads; after that, nothing can be missed.
            assert await observer.next() == ("current", 1, "a")
            assert await watch.next() == ("current", 1, "a")
            async with b:
                for term, leader, follower in ((2, a, b), (3, b, a), (4, a, b)):
                    await wait_until(lambda: followers_ready(dsn, wait), SLACK, what="a follower")
                    await leader.group(GROUP).resign()
                    assert await follower.group(GROUP).wait_elected(SLACK) == term
                await a.stop()  # a follower leaves quietly
            # b, the last leader, resigned when it stopped, with nobody left to take over.
            recorded = [
                (event["kind"], event["term"], event["instance_id"])
                for event in await history(dsn, "--group", GROUP, "--json")
            ]
            assert recorded == [
                (kind, term, "a" if term % 2 else "b")
                for term in (1, 2, 3, 4)
                for kind in ("elected", "resigned")
            ]
            # The first election happened before anyone watched.
            assert [await observer.next() for _ in recorded[1:]] == recorded[1:]
            assert [await watch.next() for _ in recorded[1:]] == recorded[1:]


async def test_observe_and_watch_reconnect_and_say_who_leads_again(
    dsn: str, wait: str, tmp_path: Path
) -> None:
    a, b = coordinator(dsn, "a", GROUP, wait=wait), coordinator(dsn, "b", GROUP, wait=wait)
    async with a:
        await a.group(GROUP).wait_elected(SLACK)
        async with watching(dsn, tmp_path / "watch.log") as (observer, watch):
            assert await observer.next() == ("current", 1, "a")
            assert await watch.next() == ("current", 1, "a")
            async with connected(dsn) as conn:
                ended = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'coordinator:observe'"
                )
            assert ended == 2
            assert await observer.next() == ("current", 1, "a")
            assert await watch.next() == ("current", 1, "a")
            async with b:
                await wait_until(lambda: followers_ready(dsn, wait), SLACK, what="b to follow")
                await a.group(GROUP).resign()
                assert await b.group(GROUP).wait_elected(SLACK) == 2
                assert [await observer.next() for _ in range(2)] == [
                    ("resigned", 1, "a"),
                    ("elected", 2, "b"),
                ]
                assert [await watch.next() for _ in range(2)] == [
                    ("resigned", 1, "a"),
                    ("elected", 2, "b"),
                ]


async def test_history_filters_by_group_and_time_and_reads_for_people(dsn: str, wait: str) -> None:
    a = coordinator(dsn, "a", GROUP, "other", wait=wait)
    async with a:
        await a.group(GROUP).wait_elected(SLACK)
        await a.group("other").wait_elected(SLACK)
    everything = await history(dsn, "--json")
    assert {(e["group"], e["kind"], e["term"]) for e in everything} == {
        (group, kind, 1) for group in (GROUP, "other") for kind in ("elected", "resigned")
    }
    assert set(everything[0]) == {"group", "kind", "term", "instance_id", "at", "reason"}
    assert await history(dsn, "--group", GROUP, "--since", "1h", "--json") == [
        e for e in everything if e["group"] == GROUP
    ]
    assert await history(dsn, "--since", "2999-01-01T00:00:00Z", "--json") == []
    lines = (await history(dsn, "--group", "other")).splitlines()
    assert len(lines) == 2
    assert "  other  elected   term 1  a" in lines[0]
    assert lines[1].endswith("(stopping)")


def test_history_refuses_a_since_it_cannot_read() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "history", "--dsn", "x", "--since", "yesterday"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "use e.g. 90s, 30m, 2h, 7d or 2024-05-01T12:00:00Z" in result.stderr


async def test_observe_reports_a_wrong_dsn_at_once_and_watch_in_one_line() -> None:
    bad = "postgresql://app:hunter2@127.0.0.1:1/app"
    with pytest.raises(ConnectionFailed, match="cannot connect"):
        async with contextlib.aclosing(observe(bad)) as changes:
            await anext(changes)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "coordinator", "watch", "--dsn", bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "cannot connect" in result.stderr
    assert "hunter2" not in result.stderr
