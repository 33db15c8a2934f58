"""Through a real PgBouncer: session pooling works, transaction pooling is refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator import UnsupportedDatabase
from coordinator.testing import PgBouncer
from coordinator.testing._pgbouncer import PoolMode
from helpers import coordinator, lock_waiters, wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("pgbouncer") is None and shutil.which("/usr/sbin/pgbouncer") is None,
    reason="pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)",
)


@pytest.fixture
def bouncer(pg_server: Any, request: pytest.FixtureRequest) -> Iterator[PgBouncer]:
    mode: PoolMode = request.param
    with PgBouncer(
        pg_server.host, pg_server.port, pool_mode=mode, password=pg_server.password
    ) as running:
        yield running


def _database(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


@pytest.mark.parametrize("bouncer", ["session"], indirect=True)
async def test_session_pooling_elects_and_hands_over(bouncer: PgBouncer, dsn: str) -> None:
    through = bouncer.dsn(_database(dsn))
    first = coordinator(through, "first")
    second = coordinator(through, "second")
    await first.start()
    try:
        await second.start()
        try:
            assert await first.group("scheduler").wait_elected(10) == 1
            await wait_until(lambda: lock_waiters(dsn), 10, what="the second to line up")
            await first.group("scheduler").resign()
            assert await second.group("scheduler").wait_elected(10) == 2
        finally:
            await second.stop()
    finally:
        await first.stop()


@pytest.mark.parametrize("bouncer", ["transaction", "statement"], indirect=True)
async def test_transaction_and_statement_pooling_are_refused(bouncer: PgBouncer, dsn: str) -> None:
    with pytest.raises(UnsupportedDatabase, match="pool_mode = session"):
        await coordinator(bouncer.dsn(_database(dsn)), "pooled").start()


@pytest.mark.parametrize("bouncer", ["transaction"], indirect=True)
def test_run_through_transaction_pooling_exits_with_one_line(bouncer: PgBouncer, dsn: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator",
            "run",
            "--dsn",
            bouncer.dsn(_database(dsn)),
            "--group",
            "scheduler",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "transaction or statement mode" in line
