"""The fault toolkit itself: the throwaway server and the proxy really do what they claim."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import asyncpg
import pytest

from coordinator.testing import LocalPostgres, TcpProxy
from helpers import connected, wait_until

if TYPE_CHECKING:
    from conftest import PgServer

MakeProxy = Callable[[], TcpProxy]
#: How long a query gets to prove that it hangs; any answer before then fails the test.
HANG = 0.3


async def _fetch(dsn: str, query: str) -> object:
    async with connected(dsn) as conn:
        return await conn.fetchval(query)


async def _backend_exists(pg_server: PgServer, pid: int) -> bool:
    """Asked directly, not through any proxy: does the server still run this backend?"""
    async with connected(pg_server.dsn) as conn:
        return bool(
            await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
        )


def _local(pg_server: PgServer) -> LocalPostgres:
    if pg_server.local is None:
        pytest.skip(f"tests LocalPostgres, and the session runs on {pg_server.description}")
    return pg_server.local


@pytest.fixture
async def through_proxy(
    make_proxy: MakeProxy, pg_server: PgServer
) -> AsyncIterator[tuple[TcpProxy, asyncpg.Connection]]:
    """A proxy and one connection through it, terminated (never waited on) afterwards."""
    proxy = make_proxy()
    conn = await asyncpg.connect(proxy.dsn(pg_server.dsn))
    yield proxy, conn
    conn.terminate()


# LocalPostgres


async def test_server_answers_on_tcp_with_the_version_it_reports(pg_server: PgServer) -> None:
    async with connected(pg_server.dsn) as conn:
        assert await conn.fetchval("SELECT host(inet_server_addr())") == "127.0.0.1"
        assert int(await conn.fetchval("SHOW server_version_num")) // 10000 == pg_server.version


async def test_wrong_password_is_rejected_over_tcp(pg_server: PgServer) -> None:
    local = _local(pg_server)
    wrong = pg_server.dsn.replace(f":{quote(local.password, safe='')}@", ":not-the-password@")
    assert wrong != pg_server.dsn
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


async def test_restart_keeps_the_port_and_the_data(pg_server: PgServer, bare_dsn: str) -> None:
    await _fetch(bare_dsn, "CREATE TABLE kept AS SELECT 42 AS answer")
    await asyncio.to_thread(pg_server.restart)
    assert await _fetch(bare_dsn, "SELECT answer FROM kept") == 42


async def test_standby_is_a_hot_standby_in_recovery(pg_server: PgServer) -> None:
    standby = await asyncio.to_thread(pg_server.create_standby)
    try:
        assert standby.port != _local(pg_server).port
        assert await _fetch(standby.dsn, "SELECT pg_is_in_recovery()") is True
    finally:
        await asyncio.to_thread(standby.close)


async def test_killed_server_drops_clients_starts_again_and_close_removes_it(
    pg_server: PgServer,
) -> None:
    """A server of its own: killing the session's would disturb the other tests' databases."""
    server = LocalPostgres(_local(pg_server).bin_dir)
    with server:
        data_dir = server.data_dir
        conn = await asyncpg.connect(server.dsn)
        try:
            await asyncio.to_thread(server.kill)
            await wait_until(lambda: _is_closed(conn), 5, what="the client to see the crash")
        finally:
            conn.terminate()
        assert not server.running
        await asyncio.to_thread(server.start)
        assert await _fetch(server.dsn, "SELECT 1") == 1
    assert not server.running
    assert not data_dir.exists()


# TcpProxy


def test_proxy_dsn_keeps_everything_but_host_and_port(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    dsn = "postgresql://app:s%40cret@db.example:6543/app?sslmode=disable"
    expected = f"postgresql://app:s%40cret@127.0.0.1:{proxy.port}/app?sslmode=disable"
    assert proxy.dsn(dsn) == expected


async def test_proxy_passes_queries_and_counts_connections(
    through_proxy: tuple[TcpProxy, asyncpg.Connection], pg_server: PgServer
) -> None:
    proxy, conn = through_proxy
    assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    assert await asyncio.to_thread(lambda: proxy.connections) == 1
    assert await _backend_exists(pg_server, conn.get_server_pid())
    await conn.close()
    await wait_until(
        lambda: asyncio.to_thread(lambda: proxy.connections == 0), 5, what="the proxy to notice"
    )


async def test_delayed_proxy_still_delivers_everything_in_order(
    through_proxy: tuple[TcpProxy, asyncpg.Connection],
) -> None:
    proxy, conn = through_proxy
    await asyncio.to_thread(proxy.delay, 0.05)
    rows = await conn.fetch("SELECT n, repeat('x', 100) AS pad FROM generate_series(1, 20000) n")
    assert [row["n"] for row in rows] == list(range(1, 20001))


async def test_blackhole_hangs_queries_and_new_connections_but_closes_no_socket(
    through_proxy: tuple[TcpProxy, asyncpg.Connection], pg_server: PgServer
) -> None:
    proxy, conn = through_proxy
    pid = conn.get_server_pid()
    await asyncio.to_thread(proxy.blackhole)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.fetchval("SELECT 1"), HANG)
    with pytest.raises(TimeoutError):
        await asyncpg.connect(proxy.dsn(pg_server.dsn), timeout=HANG)
    # Neither end was told: the client's socket is open, and the server still runs the backend.
    assert not conn.is_closed()
    assert await _backend_exists(pg_server, pid)


async def test_heal_lets_new_connections_through_while_old_ones_stay_cut(
    through_proxy: tuple[TcpProxy, asyncpg.Connection], pg_server: PgServer
) -> None:
    proxy, old = through_proxy
    await asyncio.to_thread(proxy.blackhole)
    await asyncio.to_thread(proxy.heal)
    assert await _fetch(proxy.dsn(pg_server.dsn), "SELECT 7") == 7
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(old.fetchval("SELECT 1"), HANG)


async def test_reset_aborts_both_ends_of_every_connection(
    through_proxy: tuple[TcpProxy, asyncpg.Connection], pg_server: PgServer
) -> None:
    proxy, conn = through_proxy
    pid = conn.get_server_pid()
    await asyncio.to_thread(proxy.reset)
    assert await asyncio.to_thread(lambda: proxy.connections) == 0
    await wait_until(lambda: _is_closed(conn), 5, what="the client to see the reset")
    with pytest.raises(asyncpg.InterfaceError):
        await conn.fetchval("SELECT 1")

    async def backend_gone() -> bool:
        return not await _backend_exists(pg_server, pid)

    await wait_until(backend_gone, 5, what="the server to end the backend")


async def _is_closed(conn: asyncpg.Connection) -> bool:
    return bool(conn.is_closed())


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only under root")
def test_a_temporary_directory_the_server_user_cannot_enter_is_one_line_before_initdb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = tmp_path / "private"
    closed.mkdir(mode=0o700)
    (closed / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(closed / "tmp"))
    server = LocalPostgres.embedded()
    with pytest.raises(RuntimeError) as raised:
        server.start()
    message = str(raised.value)
    assert f"cannot enter {closed} (mode 700)" in message
    assert "set TMPDIR to a directory others may enter" in message
    assert len(message.splitlines()) == 1
    assert not list((closed / "tmp").iterdir())  # nothing made before the refusal
