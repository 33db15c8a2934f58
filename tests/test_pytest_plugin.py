"""The pytest plugin, as an application's test suite gets it: loaded by its entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snippets import block

pytestmark = pytest.mark.slow

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
PYTEST += ["-o", "asyncio_default_fixture_loop_scope=function"]

#: Beside the test file of docs/testing.md: an asyncio test, and a second database.
ASYNC_TEST = """
import asyncpg
import pytest

from coordinator import Coordinator


@pytest.mark.asyncio
async def test_every_test_gets_a_fresh_database(coordinator_dsn):
    conn = await asyncpg.connect(coordinator_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM coordinator.leaders") == 0
    finally:
        await conn.close()
    coordinator = Coordinator(coordinator_dsn, instance_id="app")
    group = coordinator.group("jobs")
    async with coordinator:
        assert await group.wait_elected(10) == 1
"""


def test_an_app_s_tests_get_a_throwaway_server_and_a_migrated_dsn(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text(block("testing.md", "python", file="test_app.py"))
    (tmp_path / "test_async_app.py").write_text(ASYNC_TEST)
    env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_TEST_DSN"}
    result = subprocess.run(
        [*PYTEST, "test_app.py", "test_async_app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
