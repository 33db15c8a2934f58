"""The snippets of docs/fastapi.md and docs/apscheduler.md, run as written against PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from helpers import connected, wait_until

DOCS = Path(__file__).resolve().parent.parent / "docs"
SLACK = 15.0
#: A fenced code block whose first line names the file it is: ``# myapp/main.py``.
_FILE_BLOCK = re.compile(r"```python\n# (?P<path>[\w/]+\.py)\n(?P<code>.*?)```", re.DOTALL)


def write_snippets(page: str, where: Path) -> list[str]:
    """Write each named block of ``docs/<page>`` under ``where``; return their paths."""
    paths = []
    for match in _FILE_BLOCK.finditer((DOCS / page).read_text()):
        target = where / match["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "__init__.py").touch()
        target.write_text(match["code"])
        paths.append(match["path"])
    return paths


@pytest.fixture
def snippets(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for the snippets' modules, forgotten afterwards."""
    before = set(sys.modules)
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - before:
        if sys.modules[name].__file__ and str(tmp_path) in str(sys.modules[name].__file__):
            del sys.modules[name]


async def timetable_row(dsn: str, job_id: str) -> Any:
    """The job's row on the timetable; None until it is there (or migrated at all)."""
    async with connected(dsn) as conn:
        try:
            return await conn.fetchrow("SELECT * FROM coordinator.jobs WHERE job_id = $1", job_id)
        except asyncpg.UndefinedTableError:
            return None


async def test_the_fastapi_app_shape_runs_as_written(
    bare_dsn: str, snippets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert write_snippets("fastapi.md", snippets) == ["myapp/billing.py", "myapp/main.py"]
    monkeypatch.setenv("DATABASE_URL", bare_dsn)  # migrate=True does the rest
    app = importlib.import_module("myapp.main").create_app()
    async with app.router.lifespan_context(app):
        term = await app.state.group.wait_elected(SLACK)
        job = app.state.scheduler.get_job("send-invoices")

        async def placed() -> bool:
            return job.next_run_time is not None

        await wait_until(placed, SLACK, what="the job on the shared timetable")
        assert await timetable_row(bare_dsn, "send-invoices") is not None
        tick = job.next_run_time - timedelta(minutes=5, seconds=-0.5)
        await app.state.leader_jobs.run_ticks(job, [tick])  # what the scheduler does when due
        async with connected(bare_dsn) as conn:
            assert await conn.fetch("SELECT due, term FROM invoice_runs") == [(tick, term)]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.post("/reindex")).json() == {"term": term}
        assert app.state.scheduler.get_job("refresh-cache") is not None


async def test_the_apscheduler_snippet_runs_as_written(bare_dsn: str, snippets: Path) -> None:
    assert write_snippets("apscheduler.md", snippets) == ["sweeper.py"]
    main = importlib.import_module("sweeper").main
    serving = asyncio.create_task(main(bare_dsn))
    try:
        row = await wait_until(lambda: timetable_row(bare_dsn, "sweep"), SLACK, what="the job")
        assert row["trigger"] == "interval[0:05:00]"
        assert row["next_fire_at"] is not None
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    async with connected(bare_dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM coordinator.leaders") == 1
