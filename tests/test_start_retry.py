"""`coordinator run` waits out a database it cannot use at start, instead of crash-looping.

Each test starts a real `coordinator run` process while the database is
unusable (silent, read-only), checks what it says in its log and on /livez
and /readyz while it retries, then cures the database and waits for the
election. What no wait can cure (a missing schema, a refused password) ends
the process at once with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordinator.testing import CoordinatorProcess, TcpProxy
from endpoints import HTTP_ANY_PORT, get_json, http_port, wait_status
from helpers import FAST, connected

Spawn = Callable[..., CoordinatorProcess]
GROUP = "scheduler"
WAIT = 20.0
#: Short waits between attempts, so that several happen within a test.
RETRY_FAST = ["--connect-timeout", "300ms", "--reconnect-min", "10ms", "--reconnect-max", "200ms"]


def database_name(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1].split("?")[0]


def test_a_silent_database_at_start_is_waited_for_live_but_unready(
    dsn: str, make_proxy: Callable[[], TcpProxy], spawn: Spawn
) -> None:
    proxy = make_proxy()
    proxy.blackhole()
    process = spawn(
        proxy.dsn(dsn), [GROUP], instance_id="a", **FAST, extra_args=[*HTTP_ANY_PORT, *RETRY_FAST]
    )
    port = http_port(process)
    first = process.wait_for("start_failed_retrying", WAIT)
    assert "no answer from" in first["problem"]
    process.wait_for("start_failed_retrying", WAIT, attempt=2)
    status, live = get_json(port, "/livez")
    assert status == 200, live
    status, ready = get_json(port, "/readyz")
    assert status == 503
    assert "no answer from" in ready["reason"], ready
    proxy.heal()
    process.wait_for("leadership_acquired", WAIT, term=1)
    process.wait_for("started_after_retries", 0)
    wait_status(port, "/readyz", 200, WAIT)


async def test_a_read_only_database_at_start_is_waited_for_until_it_takes_writes(
    dsn: str, spawn: Spawn
) -> None:
    name = database_name(dsn)
    async with connected(dsn) as conn:
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    process = spawn(dsn, [GROUP], instance_id="a", **FAST, extra_args=[*HTTP_ANY_PORT, *RETRY_FAST])
    port = http_port(process)
    retrying = process.wait_for("start_failed_retrying", WAIT)
    assert "read-only" in retrying["problem"]
    ready = wait_status(port, "/readyz", 503, WAIT)
    assert "read-only" in ready["reason"], ready
    async with connected(dsn) as conn:
        await conn.execute("SET default_transaction_read_only = off")
        await conn.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    process.wait_for("leadership_acquired", WAIT, term=1)


def test_a_stop_while_waiting_exits_cleanly(
    dsn: str, make_proxy: Callable[[], TcpProxy], spawn: Spawn
) -> None:
    proxy = make_proxy()
    proxy.blackhole()
    process = spawn(proxy.dsn(dsn), [GROUP], instance_id="a", **FAST, extra_args=RETRY_FAST)
    process.wait_for("start_failed_retrying", WAIT)
    process.terminate()
    assert process.wait_exit(WAIT) == 0
    assert not stderr_lines(process)


def stderr_lines(process: CoordinatorProcess) -> list[str]:
    return [r["event"] for r in process.records() if r.get("stream") == "stderr"]


def assert_fails_at_once(process: CoordinatorProcess, fragment: str) -> None:
    assert process.wait_exit(WAIT) == 1
    assert not [r for r in process.records() if r.get("event") == "start_failed_retrying"]
    (line,) = stderr_lines(process)
    assert fragment in line


def test_a_missing_schema_fails_at_once(bare_dsn: str, spawn: Spawn) -> None:
    assert_fails_at_once(
        spawn(bare_dsn, [GROUP], instance_id="a", **FAST, extra_args=RETRY_FAST),
        "coordinator tables are missing",
    )


def test_a_refused_password_fails_at_once(dsn: str, spawn: Spawn, pg_server: Any) -> None:
    wrong = dsn.replace(f":{pg_server.password}@", ":not-the-password@")
    assert wrong != dsn, "the test server's DSN carries a password"
    assert_fails_at_once(
        spawn(wrong, [GROUP], instance_id="a", **FAST, extra_args=RETRY_FAST),
        "refused the password",
    )
