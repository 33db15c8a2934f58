"""Fenced transactions: a write of an old term never commits after a newer term exists."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from coordinator import Coordinator, NotLeader, StaleTerm
from helpers import FAST, coordinator, followers_ready, wait_until

GROUP = "ledger"
SLACK = 10.0  # generous bound for waits; the machines are shared
TESTS = Path(__file__).resolve().parent

CREATE_WRITES = """
    CREATE TABLE writes (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        instance_id text   NOT NULL,
        term        bigint NOT NULL
    )
"""
INSERT_WRITE = "INSERT INTO writes (instance_id, term) VALUES ($1, $2)"


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """An application connection, with the table the tests write to."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(CREATE_WRITES)
    yield conn
    await conn.close()


async def writes(conn: asyncpg.Connection) -> list[tuple[str, int]]:
    rows = await conn.fetch("SELECT instance_id, term FROM writes ORDER BY id")
    return [(row["instance_id"], row["term"]) for row in rows]


async def waits_for_the_leader_row(conn: asyncpg.Connection, instance_id: str) -> bool:
    """Whether a session of ``instance_id`` waits on a row lock (taking office, here)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 "
            "AND wait_event_type = 'Lock' AND wait_event <> 'advisory')",
            f"coordinator:{instance_id}",
        )
    )


async def current_term(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval("SELECT term FROM coordinator.leaders WHERE group_name = $1", GROUP)
    )


async def end_lock_session(conn: asyncpg.Connection) -> None:
    """The fault: the leader's lock session is terminated, as a dead TCP session would be."""
    pid = await conn.fetchval(
        "SELECT backend_pid FROM coordinator.leaders WHERE group_name = $1", GROUP
    )
    assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)


# -- the API ------------------------------------------------------------------


async def test_fenced_write_commits_with_the_current_term(
    dsn: str, wait: str, db: asyncpg.Connection
) -> None:
    leader = coordinator(dsn, "a", GROUP, wait=wait)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with leader:
            group = leader.group(GROUP)
            term = await group.wait_elected(SLACK)
            async with group.fenced(db) as tx:
                await tx.conn.execute(INSERT_WRITE, "a", tx.term)
            async with group.fenced(pool, term=term) as tx:  # a pool lends a connection
                await tx.conn.execute(INSERT_WRITE, "a", tx.term)
    finally:
        await pool.close()
    assert (tx.group, tx.term) == (GROUP, 1)
    assert await writes(db) == [("a", 1), ("a", 1)]


async def test_follower_and_wrong_term_are_refused_before_anything_is_written(
    dsn: str, wait: str, db: asyncpg.Connection
) -> None:
    leader, follower = (
        coordinator(dsn, "a", GROUP, wait=wait),
        coordinator(dsn, "b", GROUP, wait=wait),
    )
    async with leader:
        term = await leader.group(GROUP).wait_elected(SLACK)
        async with follower:
            with pytest.raises(NotLeader, match="does not lead group 'ledger'") as refused:
                async with follower.group(GROUP).fenced(db):
                    await db.execute(INSERT_WRITE, "b", 0)
            assert not isinstance(refused.value, StaleTerm)
            with pytest.raises(StaleTerm, match="term 7 of group 'ledger'"):
                async with leader.group(GROUP).fenced(db, term=term + 6):
                    await db.execute(INSERT_WRITE, "a", term + 6)
            with pytest.raises(RuntimeError, match="outermost transaction"):
                async with db.transaction(), leader.group(GROUP).fenced(db):
                    pass
    assert await writes(db) == []


async def test_assert_term_in_sql_names_the_current_term_and_holds_the_row(
    dsn: str, wait: str, db: asyncpg.Connection
) -> None:
    leader = coordinator(dsn, "a", GROUP, wait=wait)
    async with leader:
        await leader.group(GROUP).wait_elected(SLACK)
        with pytest.raises(asyncpg.PostgresError) as stale:
            async with db.transaction():
                await db.execute("SELECT coordinator.assert_term($1, 5)", GROUP)
        assert stale.value.sqlstate == "LT001"
        message = stale.value.message
        assert "term 5 of group 'ledger' is not current (the group is at term 1)" in message
        assert "'a'" not in message  # the holder is not told to whoever asks
        with pytest.raises(asyncpg.UndefinedObjectError, match="group 'nope' is not registered"):
            async with db.transaction():
                await db.execute("SELECT coordinator.assert_term('nope', 1)")
        probe = await asyncpg.connect(dsn)
        try:
            async with db.transaction():
                assert await db.fetchval("SELECT coordinator.assert_term($1, 1)", GROUP) == 1
                idle_limit = await db.fetchval("SHOW idle_in_transaction_session_timeout")
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await probe.execute(
                        "SELECT 1 FROM coordinator.leaders WHERE group_name = $1 FOR UPDATE NOWAIT",
                        GROUP,
                    )
        finally:
            await probe.close()
        assert idle_limit == "1500ms"  # the group's ttl


async def test_a_writer_role_needs_only_execute_and_cannot_change_who_leads(
    dsn: str, wait: str, db: asyncpg.Connection
) -> None:
    writer = f"writer_{secrets.token_hex(4)}"
    await db.execute(f"""
        CREATE ROLE {writer} NOLOGIN;
        GRANT USAGE ON SCHEMA coordinator TO {writer};
        GRANT EXECUTE ON FUNCTION coordinator.assert_term(text, bigint) TO {writer};
        GRANT INSERT ON writes TO {writer};
    """)
    leader = coordinator(dsn, "a", GROUP, wait=wait)
    try:
        async with leader:
            await leader.group(GROUP).wait_elected(SLACK)
            await db.execute(f"SET ROLE {writer}")
            async with db.transaction():
                await db.execute("SELECT coordinator.assert_term($1, 1)", GROUP)
                await db.execute(INSERT_WRITE, writer, 1)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await db.execute("UPDATE coordinator.leaders SET term = term + 1")
    finally:
        await db.execute(f"RESET ROLE; DROP OWNED BY {writer}; DROP ROLE {writer}")
    assert await writes(db) == [(writer, 1)]


# -- a fenced transaction in flight while a new leader takes office ---------------

Finish = Callable[[], Awaitable[None]]


async def sql_transaction(
    dsn: str, leader: Coordinator, *, commit: bool
) -> tuple[Finish, list[tuple[str, int]]]:
    """Another tool's transaction, fenced in SQL with ``assert_term``, finished on demand."""
    conn = await asyncpg.connect(dsn)
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT coordinator.assert_term($1, 1)", GROUP)
    await conn.execute(INSERT_WRITE, "tool", 1)

    async def finish() -> None:
        await (tx.commit() if commit else tx.rollback())
        await conn.close()

    return finish, [("tool", 1)] if commit else []


async def python_transaction(
    dsn: str, leader: Coordinator, *, commit: bool
) -> tuple[Finish, list[tuple[str, int]]]:
    """The old leader's own ``fenced()`` block; its term ends before the block does."""
    conn = await asyncpg.connect(dsn)
    opened, release = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        async with leader.group(GROUP).fenced(conn) as tx:
            await tx.conn.execute(INSERT_WRITE, "a", tx.term)
            opened.set()
            await release.wait()

    writing = asyncio.create_task(write())
    await asyncio.wait_for(opened.wait(), SLACK)

    async def finish() -> None:
        release.set()
        with pytest.raises(StaleTerm, match="ended before the fenced transaction committed"):
            await writing
        await conn.close()

    return finish, []


@pytest.mark.parametrize(
    ("opener", "commit"),
    [(sql_transaction, True), (sql_transaction, False), (python_transaction, False)],
    ids=["sql-commit", "sql-rollback", "fenced-block-of-a-demoted-leader"],
)
async def test_new_term_appears_only_after_the_fenced_transaction_in_flight_ends(
    dsn: str, wait: str, db: asyncpg.Connection, opener: Any, commit: bool
) -> None:
    old, new = coordinator(dsn, "a", GROUP, wait=wait), coordinator(dsn, "b", GROUP, wait=wait)
    async with old:
        assert await old.group(GROUP).wait_elected(SLACK) == 1
        async with new:
            await wait_until(lambda: followers_ready(dsn, wait), SLACK, what="b to follow")
            finish, expected_rows = await opener(dsn, old, commit=commit)
            await end_lock_session(db)
            await old.group(GROUP).wait_demoted(SLACK)
            # b holds the lock now, and its term update waits for the transaction's FOR SHARE.
            await wait_until(
                lambda: waits_for_the_leader_row(db, "b"), SLACK, what="b to wait for the row"
            )
            assert await current_term(db) == 1
            assert not new.group(GROUP).is_leader
            await finish()
            assert await new.group(GROUP).wait_elected(SLACK) == 2
    assert await writes(db) == expected_rows


# -- a paused old leader, as a real process ---------------------------------------


async def fenced_writer(dsn: str, instance_id: str, wait: str) -> None:
    """A leader process that writes through fenced transactions when told to.

    Protocol, one line each way: ``write`` commits one row in the elected
    term; ``hold`` opens the transaction, writes, says ``holding`` and waits
    for any line before it tries to commit. Replies are JSON objects.
    """
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    loop = asyncio.get_running_loop()

    def say(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    async def read_line() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    leader = coordinator(dsn, instance_id, GROUP, wait=wait)
    async with leader:
        term = await leader.group(GROUP).wait_elected(SLACK)
        conn = await asyncpg.connect(dsn)
        say({"elected": term})
        while command := await read_line():
            try:
                async with leader.group(GROUP).fenced(conn, term=term) as tx:
                    await tx.conn.execute(INSERT_WRITE, instance_id, tx.term)
                    if command == "hold":
                        say({"holding": term})
                        await read_line()
                say({"wrote": term})
            except NotLeader as error:
                say({"refused": term, "error": type(error).__name__})


class Writer:
    """``fenced_writer`` in its own process, to be paused with SIGSTOP."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, dsn: str, instance_id: str, wait: str, log: Path) -> Writer:
        code = (
            f"import asyncio, sys; sys.path.insert(0, {str(TESTS)!r}); import test_fencing; "
            "asyncio.run(test_fencing.fenced_writer(*sys.argv[1:4]))"
        )
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                code,
                dsn,
                instance_id,
                wait,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        return cls(process, log)

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.reply()

    async def reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), SLACK)
        except TimeoutError:
            line = b""
        if not line:
            raise AssertionError(f"the writer said nothing; its log:\n{self.log.read_text()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("paused", ["between-writes", "inside-a-transaction"])
async def test_paused_old_leader_cannot_write_with_its_old_term(
    dsn: str, wait: str, db: asyncpg.Connection, tmp_path: Path, paused: str
) -> None:
    writer = await Writer.start(dsn, "old", wait, tmp_path / "writer.log")
    new = coordinator(dsn, "new", GROUP, wait=wait)
    try:
        assert await writer.reply() == {"elected": 1}
        async with new:
            assert await writer.ask("write") == {"wrote": 1}
            if paused == "inside-a-transaction":
                assert await writer.ask("hold") == {"holding": 1}
            writer.signal(signal.SIGSTOP)
            # The monitor fences the frozen leader once its heartbeat is a ttl old; a held
            # transaction is ended by the idle limit that assert_term set to the ttl.
            assert await new.group(GROUP).wait_elected(FAST["ttl"] + SLACK) == 2
            async with new.group(GROUP).fenced(db) as tx:
                await tx.conn.execute(INSERT_WRITE, "new", tx.term)
            writer.signal(signal.SIGCONT)
            command = "commit" if paused == "inside-a-transaction" else "write"
            assert await writer.ask(command) == {"refused": 1, "error": "StaleTerm"}
            async with new.group(GROUP).fenced(db) as tx:
                await tx.conn.execute(INSERT_WRITE, "new", tx.term)
    finally:
        await writer.close()
    # Whatever the old leader tried after it was paused left no row behind.
    assert await writes(db) == [("old", 1), ("new", 2), ("new", 2)]
