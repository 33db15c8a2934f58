"""The recipes of docs/exec.md, run as written: Celery beat, a cron script, a Node service."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from coordinator.testing import CoordinatorProcess
from helpers import FAST, connected
from snippets import block

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SLACK = 20.0

Spawn = Callable[..., CoordinatorProcess]


def run_recipe(spawn: Spawn, dsn: str, name: str, **env: str) -> CoordinatorProcess:
    """The recipe's command line, with the test's DSN and short timings added."""
    words = shlex.split(block("exec.md", "sh", recipe=name))
    assert words[:2] == ["coordinator", "run"]
    # The commands installed beside this Python (celery) are on the PATH, as once activated.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return spawn(dsn, [], instance_id=name, **FAST, extra_args=words[2:], env={"PATH": path, **env})


def wait_for_line(instance: CoordinatorProcess, text: str) -> None:
    """A line of the command's own output (stdout or stderr) that contains ``text``."""
    deadline = time.monotonic() + SLACK
    while not any(r.get("raw") and text in r["event"] for r in instance.records()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {text!r} in {instance.records()}")
        time.sleep(0.05)


def test_celery_beat_runs_on_the_leader(dsn: str, spawn: Spawn, tmp_path: Path) -> None:
    schedule = str(tmp_path / "celerybeat-schedule")
    beat = run_recipe(spawn, dsn, "celery-beat", REPORT_EVERY="0.2", BEAT_SCHEDULE_FILE=schedule)
    beat.wait_for("leadership_acquired", SLACK, term=1)
    wait_for_line(beat, "Sending due task report (recipe.report)")
    beat.terminate()
    assert beat.wait_exit(SLACK) == 0
    assert beat.wait_for("exec_child_stopped", 0)["reason"] == "stopping"


async def test_the_cron_script_writes_fenced_runs(dsn: str, spawn: Spawn) -> None:
    assert block("exec.md", "sh", file="examples/exec/nightly.sh") == (
        (ROOT / "examples/exec/nightly.sh").read_text()
    )
    async with connected(dsn) as conn:
        await conn.execute("CREATE TABLE nightly_runs (term bigint, instance_id text)")
    cron = run_recipe(spawn, dsn, "cron", APP_DSN=dsn, EVERY="0.1")
    cron.wait_for("leadership_acquired", SLACK, term=1)

    async def runs() -> list[asyncpg.Record]:
        async with connected(dsn) as conn:
            return await conn.fetch("SELECT term, instance_id FROM nightly_runs")

    deadline = time.monotonic() + SLACK
    while len(found := await runs()) < 2:
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)
    assert {tuple(row) for row in found} == {(1, "cron")}


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (apt-get install nodejs)")
def test_the_node_service_runs_while_leading(dsn: str, spawn: Spawn) -> None:
    service = run_recipe(spawn, dsn, "node")
    service.wait_for("leadership_acquired", SLACK, term=1)
    service.wait_for("service: leading mailer in term 1", SLACK, raw=True)
    service.terminate()
    service.wait_for("service: term 1 is over, stopping", SLACK, raw=True)
    assert service.wait_exit(SLACK) == 0
